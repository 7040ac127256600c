//! The host's network interfaces, as the agent needs them.

/// The addresses of an interface (IPv4, and IPv6 other than link-local).
pub fn addresses(name: &str) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read and
    // then free with freeifaddrs; every pointer is checked for null first.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut cursor = list;
        while !cursor.is_null() {
            let entry = &*cursor;
            let named = std::ffi::CStr::from_ptr(entry.ifa_name).to_bytes() == name.as_bytes();
            let family = if entry.ifa_addr.is_null() {
                -1
            } else {
                i32::from((*entry.ifa_addr).sa_family)
            };
            if named && family == libc::AF_INET {
                let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                found.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
            } else if named && family == libc::AF_INET6 {
                let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                let a = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if a.segments()[0] & 0xffc0 != 0xfe80 {
                    found.push(a.into());
                }
            }
            cursor = entry.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}
