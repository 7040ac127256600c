/* What the tc programs of both address families share: the configuration
 * and the counters the agent reads, conntrack expiry, and the steps of
 * recording a new flow and of sending a packet out that do not depend on the
 * family (lib/nat4.h and lib/nat6.h hold the rest). */
#ifndef PIER_NAT_H
#define PIER_NAT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pier_maps.h"

/* From <sys/socket.h> and <netinet/tcp.h>, which a BPF target cannot include. */
#define AF_INET 2
#define AF_INET6 10
#define TCP_FIN 0x01
#define TCP_RST 0x04

/* Where the IP header starts: tc sees Ethernet frames. */
#define L3 sizeof(struct ethhdr)
/* What parse() and parse6() return for ICMP errors (their own path). */
#define PARSE_ICMP -2
/* What new_flow() and new_flow6() return when the packet starts a flow
 * whose translation they wrote out: the caller applies it as it applies a
 * known flow's (one copy of that code, and of its stack, per program). */
#define PIER_NEW_FLOW -3
/* Ports tried for one new SNAT flow before it is dropped and counted. */
#define SNAT_TRIES 16

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pier_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_nat_config SEC(".maps");

/* Why a packet was dropped or left alone, counted per CPU for metrics
 * (ebpf/src/maps.rs COUNTERS names them). */
#define PIER_DROP_NO_BACKEND 0  /* a service without endpoints */
#define PIER_DROP_SNAT_PORTS 1  /* no free SNAT port for this backend */
#define PIER_DROP_NO_ROUTE 2    /* no route to the backend / client */
#define PIER_PASS_FRAGMENT 3    /* an IP fragment: never translated */
#define PIER_PASS_MALFORMED 4   /* truncated or bad headers: never translated */
#define PIER_DROP_FRAG_NEEDED 5 /* larger than the MTU towards the backend, not answerable */
#define PIER_FRAG_NEEDED_SENT 6 /* ... answered with ICMP "fragmentation needed" */
#define PIER_PASS_NO_IPV6 7     /* IPv6, but its program is not loaded: passed untouched */
#define PIER_DROP_CT_INSERT 8   /* a new flow's conntrack entry could not be stored */
#define PIER_COUNTERS 9

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PIER_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_nat_counters SEC(".maps");

static __always_inline void pier_count(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&pier_nat_counters, &reason);

	if (n)
		*n += 1;
}

static __always_inline const struct pier_config *pier_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&pier_nat_config, &zero);
}

/* Whether an entry (of either family) has been idle past its timeout. */
static __always_inline int pier_ct_expired(__u64 last_seen_ns, __u8 closing, __u8 proto, __u64 now,
					   const struct pier_config *cfg)
{
	__u64 timeout_s = proto == IPPROTO_TCP ? cfg->tcp_timeout_s : cfg->udp_timeout_s;

	if (closing)
		timeout_s = cfg->closing_timeout_s;
	/* Another CPU may have stored a later time than ours: that is fresh. */
	if (last_seen_ns > now)
		return 0;
	return now - last_seen_ns > timeout_s * 1000000000ULL;
}

static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* BPF_F_MARK_MANGLED_0 for UDP only: a TCP checksum of 0 is a real value. */
static __always_inline __u64 mangled0(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Whether the configured SNAT port range is usable. */
static __always_inline int pier_snat_ports_ok(const struct pier_config *cfg)
{
	return cfg->snat_port_min <= cfg->snat_port_max;
}

/* The i-th SNAT port to try for a flow of hash `hash`, in network order: a
 * stride through the range starting where the hash points. */
static __always_inline __be16 pier_snat_port(const struct pier_config *cfg, __u32 hash, __u32 i)
{
	__u32 range = (__u32)cfg->snat_port_max - cfg->snat_port_min + 1;

	return bpf_htons(cfg->snat_port_min + (hash + i * 7919) % range);
}

/* Claims the SNAT reply tuple `key` of `flows` for `entry` while an idle
 * flow holds it (the caller read its last_seen_ns as `seen` and found it
 * idle both ways). Exactly one CPU wins the compare-and-swap that stamps the
 * old entry with the largest time (which pier_ct_expired always reads as
 * fresh, whatever the timeouts), so only that one deletes it, and a CPU
 * still holding the old entry never deletes a newer one. The new entry goes
 * in with BPF_NOEXIST: a CPU that inserted on the freed key in between keeps
 * it. -1: try another port. */
static __always_inline int pier_ct_take_over(void *flows, const void *key, const void *entry,
					     __u64 *last_seen_ns, __u64 seen)
{
	if (__sync_val_compare_and_swap(last_seen_ns, seen, ~0ULL) != seen)
		return -1;
	if (bpf_map_delete_elem(flows, key)) {
		/* Not deleted (bucket contention): the entry gets its time back,
		 * or it would look fresh forever. */
		__sync_val_compare_and_swap(last_seen_ns, ~0ULL, seen);
		return -1;
	}
	return bpf_map_update_elem(flows, key, entry, BPF_NOEXIST) ? -1 : 0;
}

/* Stores a new flow's forward entry once its reply entry (at `reply_key`) is
 * in. When it cannot be stored the reply entry is taken back, so neither a
 * half flow nor a claimed SNAT port outlives the packet, which is dropped
 * and counted (-1). */
static __always_inline int pier_ct_commit(void *flows, const void *key, const void *forward,
					  const void *reply_key)
{
	if (bpf_map_update_elem(flows, key, forward, BPF_ANY) == 0)
		return 0;
	bpf_map_delete_elem(flows, reply_key);
	pier_count(PIER_DROP_CT_INSERT);
	return -1;
}

/* Stores a new flow's reply entry towards a backend on this node (no port
 * to claim: the client's tuple is kept); -1 when it cannot be stored. */
static __always_inline int pier_ct_insert_reply(void *flows, const void *reply_key, const void *reply)
{
	if (bpf_map_update_elem(flows, reply_key, reply, BPF_ANY) == 0)
		return 0;
	pier_count(PIER_DROP_CT_INSERT);
	return -1;
}

/* The end of send_out for both families, once the TTL / hop limit is
 * decremented: to the next hop the FIB lookup found (with its MACs; when the
 * neighbour is not resolved yet the kernel resolves it), or dropped and
 * counted. */
static __always_inline int pier_fib_redirect(struct __sk_buff *skb, const struct bpf_fib_lookup *fib, long rc)
{
	struct bpf_redir_neigh nh = {};

	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, 0) ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, 0))
			return TC_ACT_SHOT;
		return bpf_redirect(fib->ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		nh.nh_family = fib->family;
		if (fib->family == AF_INET)
			nh.ipv4_nh = fib->ipv4_dst;
		else
			__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, sizeof(nh.ipv6_nh));
		return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
	}
	pier_count(rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? PIER_DROP_FRAG_NEEDED : PIER_DROP_NO_ROUTE);
	return TC_ACT_SHOT;
}

#endif
