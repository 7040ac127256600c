/* IPv6 from outside, for tc_nodeport.c: NodePorts on the node's IPv6
 * addresses, IPv6 externalIPs and LB IPs get the same translation as IPv4
 * (DNAT; SNAT and a redirect for a remote backend; conntrack both ways; see
 * lib/nat4.h). Packets with extension headers (fragments included) are left
 * alone; ICMPv6 errors about a known flow are translated like it. */
#ifndef PIER_NAT6_H
#define PIER_NAT6_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pier_maps.h"
#include "lib/nat.h"
#include "lib/lb6.h"
#include "lib/ct6.h"

#define IPV6_FRAGMENT 44
#define IPPROTO_ICMPV6_ 58
#define ICMPV6_DEST_UNREACH_ 1
#define ICMPV6_PACKET_TOO_BIG 2
#define ICMPV6_TIME_EXCEEDED 3

struct packet6 {
	__u32 l4;
	__u32 csum_off;
	struct pier_ct6_key tuple;
	__u8 tcp_flags;
};

static __always_inline int addr6_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int addr6_is_zero(const __be32 *a)
{
	return !(a[0] | a[1] | a[2] | a[3]);
}

static __always_inline void addr6_copy(__be32 *to, const __be32 *from)
{
	to[0] = from[0];
	to[1] = from[1];
	to[2] = from[2];
	to[3] = from[3];
}

/* 0 for IPv6 TCP / UDP without extension headers and with complete headers. */
static __always_inline int parse6(struct __sk_buff *skb, struct packet6 *p)
{
	struct ipv6hdr ip;
	__be16 ports[2];
	__u32 end, l4_len = 8;
	__be16 h_proto;
	__u8 doff;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &h_proto, 2) < 0 ||
	    h_proto != bpf_htons(ETH_P_IPV6))
		return -1;
	if (bpf_skb_load_bytes(skb, L3, &ip, sizeof(ip)) < 0 || ip.version != 6)
		goto malformed;
	end = L3 + sizeof(ip) + bpf_ntohs(ip.payload_len);
	if (end > skb->len)
		goto malformed;
	if (ip.nexthdr == IPV6_FRAGMENT) {
		pier_count(PIER_PASS_FRAGMENT);
		return -1;
	}
	p->l4 = L3 + sizeof(ip);
	addr6_copy(p->tuple.saddr, ip.saddr.in6_u.u6_addr32);
	addr6_copy(p->tuple.daddr, ip.daddr.in6_u.u6_addr32);
	p->tuple.proto = ip.nexthdr;
	if (ip.nexthdr == IPPROTO_ICMPV6_) {
		p->csum_off = p->l4 + 2;
		return PARSE_ICMP;
	}
	if (ip.nexthdr != IPPROTO_TCP && ip.nexthdr != IPPROTO_UDP)
		return -1;
	if (ip.nexthdr == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, p->l4 + 12, &doff, 1) < 0 ||
		    bpf_skb_load_bytes(skb, p->l4 + 13, &p->tcp_flags, 1) < 0)
			goto malformed;
		l4_len = (doff >> 4) * 4;
		if (l4_len < 20)
			goto malformed;
	}
	if (p->l4 + l4_len > end || bpf_skb_load_bytes(skb, p->l4, ports, sizeof(ports)) < 0)
		goto malformed;
	p->csum_off = p->l4 + (ip.nexthdr == IPPROTO_TCP ? 16 : 6);
	p->tuple.sport = ports[0];
	p->tuple.dport = ports[1];
	return 0;
malformed:
	pier_count(PIER_PASS_MALFORMED);
	return -1;
}

/* Replaces a 16-byte address at `off`, keeping the checksum at `csum_off`
 * right (`flags`: BPF_F_PSEUDO_HDR for the IPv6 header's own addresses, as
 * IPv6 has no header checksum; 0 for addresses inside a payload). An address
 * in the header is stored with BPF_F_RECOMPUTE_CSUM: with no header checksum
 * to absorb the change, a CHECKSUM_COMPLETE skb's csum must follow it. */
static __always_inline int replace_addr6(struct __sk_buff *skb, __u32 csum_off, __u32 off, __be32 *old,
					 __be32 *new, __u64 flags)
{
	__u64 store = (flags & BPF_F_PSEUDO_HDR) ? BPF_F_RECOMPUTE_CSUM : 0;
	__s64 diff;

	if (addr6_eq(old, new))
		return 0;
	diff = bpf_csum_diff(old, 16, new, 16, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, flags) ||
	    bpf_skb_store_bytes(skb, off, new, 16, store))
		return -1;
	return 0;
}

static __always_inline int store_addr6(struct __sk_buff *skb, const struct packet6 *p, __u32 off,
				       __be32 *old, __be32 *new)
{
	return replace_addr6(skb, p->csum_off, off, old, new, BPF_F_PSEUDO_HDR | mangled0(p->tuple.proto));
}

static __always_inline int rewrite6(struct __sk_buff *skb, struct packet6 *p, struct pier_ct6_entry *to)
{
	if (store_addr6(skb, p, L3 + offsetof(struct ipv6hdr, saddr), p->tuple.saddr, to->saddr) ||
	    store_addr6(skb, p, L3 + offsetof(struct ipv6hdr, daddr), p->tuple.daddr, to->daddr))
		return -1;
	if (to->sport != p->tuple.sport &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->tuple.sport, to->sport, mangled0(p->tuple.proto) | 2) ||
	     bpf_skb_store_bytes(skb, p->l4, &to->sport, 2, 0)))
		return -1;
	if (to->dport != p->tuple.dport &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->tuple.dport, to->dport, mangled0(p->tuple.proto) | 2) ||
	     bpf_skb_store_bytes(skb, p->l4 + 2, &to->dport, 2, 0)))
		return -1;
	return 0;
}

/* As fib_out, for IPv6. */
static __always_inline long fib_out6(struct __sk_buff *skb, const struct packet6 *p,
				     const struct pier_ct6_entry *to, struct bpf_fib_lookup *fib)
{
	fib->family = AF_INET6;
	fib->l4_protocol = p->tuple.proto;
	addr6_copy(fib->ipv6_src, to->saddr);
	addr6_copy(fib->ipv6_dst, to->daddr);
	fib->ifindex = skb->ingress_ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/* As send_out, for IPv6 (hop limit instead of TTL, no header checksum). */
static __always_inline int send_out6(struct __sk_buff *skb, const struct bpf_fib_lookup *fib, long rc)
{
	__u32 hop_at = L3 + offsetof(struct ipv6hdr, hop_limit);
	__u8 hops;

	if (bpf_skb_load_bytes(skb, hop_at, &hops, 1) < 0 || hops <= 1)
		return TC_ACT_SHOT;
	hops -= 1;
	if (bpf_skb_store_bytes(skb, hop_at, &hops, 1, 0))
		return TC_ACT_SHOT;
	return pier_fib_redirect(skb, fib, rc);
}

static __always_inline int redirect_out6(struct __sk_buff *skb, const struct packet6 *p,
					 const struct pier_ct6_entry *to)
{
	struct bpf_fib_lookup fib = {};

	return send_out6(skb, &fib, fib_out6(skb, p, to, &fib));
}

/* The ICMPv6 header of a "packet too big". */
struct icmp6_too_big {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 mtu;
};

/* The pseudo header the ICMPv6 checksum starts with. */
struct pseudo6 {
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 len;
	__be32 next;
};

/* Scratch space for building a "packet too big", off the stack (see the
 * budget in tc_nodeport.c). Per CPU, not pinned. */
struct ptb6_scratch {
	struct ethhdr eth;
	unsigned char mac[ETH_ALEN];
	struct ipv6hdr ip;
	struct icmp6_too_big icmp;
	struct pseudo6 pseudo;
	__u8 quoted[sizeof(struct ipv6hdr) + 8];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ptb6_scratch);
} pier_nat_scratch6 SEC(".maps");

/* IPv6 routers never fragment: a packet too big for the way to a remote
 * backend is answered with a "packet too big" carrying that MTU, built in
 * place from the packet (its IPv6 header and first 8 transport bytes
 * quoted), so path MTU discovery works through the NodePort. */
static __attribute__((noinline)) int packet_too_big6(struct __sk_buff *skb, __u16 mtu)
{
	__u32 zero = 0;
	struct ptb6_scratch *b = bpf_map_lookup_elem(&pier_nat_scratch6, &zero);
	__s64 sum;

	/* Kernels before 5.12 do not report the MTU: no answer beats a wrong one. */
	if (mtu == 0) {
		pier_count(PIER_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	if (!b || bpf_skb_load_bytes(skb, 0, &b->eth, sizeof(b->eth)) < 0 ||
	    bpf_skb_load_bytes(skb, L3, b->quoted, sizeof(b->quoted)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(&b->ip, b->quoted, sizeof(b->ip));
	if (bpf_skb_adjust_room(skb, sizeof(b->ip) + sizeof(b->icmp), BPF_ADJ_ROOM_MAC, 0) ||
	    bpf_skb_change_tail(skb, sizeof(b->eth) + sizeof(b->ip) + sizeof(b->icmp) + sizeof(b->quoted), 0)) {
		pier_count(PIER_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(b->mac, b->eth.h_dest, ETH_ALEN);
	__builtin_memcpy(b->eth.h_dest, b->eth.h_source, ETH_ALEN);
	__builtin_memcpy(b->eth.h_source, b->mac, ETH_ALEN);
	addr6_copy(b->pseudo.saddr, b->ip.daddr.in6_u.u6_addr32);
	addr6_copy(b->pseudo.daddr, b->ip.saddr.in6_u.u6_addr32);
	addr6_copy(b->ip.saddr.in6_u.u6_addr32, b->pseudo.saddr);
	addr6_copy(b->ip.daddr.in6_u.u6_addr32, b->pseudo.daddr);
	b->ip.payload_len = bpf_htons(sizeof(b->icmp) + sizeof(b->quoted));
	b->ip.nexthdr = IPPROTO_ICMPV6_;
	b->ip.hop_limit = 64;
	b->ip.priority = 0;
	b->ip.flow_lbl[0] = b->ip.flow_lbl[1] = b->ip.flow_lbl[2] = 0;
	b->pseudo.len = bpf_htonl(sizeof(b->icmp) + sizeof(b->quoted));
	b->pseudo.next = bpf_htonl(IPPROTO_ICMPV6_);
	b->icmp.type = ICMPV6_PACKET_TOO_BIG;
	b->icmp.code = 0;
	b->icmp.checksum = 0;
	b->icmp.mtu = bpf_htonl(mtu);
	sum = bpf_csum_diff(0, 0, (__be32 *)&b->pseudo, sizeof(b->pseudo), 0);
	if (sum >= 0)
		sum = bpf_csum_diff(0, 0, (__be32 *)&b->icmp, sizeof(b->icmp), sum);
	if (sum >= 0)
		sum = bpf_csum_diff(0, 0, (__be32 *)b->quoted, sizeof(b->quoted), sum);
	if (sum < 0)
		return TC_ACT_SHOT;
	b->icmp.checksum = csum_fold(sum);
	if (bpf_skb_store_bytes(skb, 0, &b->eth, sizeof(b->eth), 0) ||
	    bpf_skb_store_bytes(skb, L3, &b->ip, sizeof(b->ip), 0) ||
	    bpf_skb_store_bytes(skb, L3 + sizeof(b->ip), &b->icmp, sizeof(b->icmp), 0))
		return TC_ACT_SHOT;
	pier_count(PIER_FRAG_NEEDED_SENT);
	return bpf_redirect(skb->ingress_ifindex, 0);
}

static __always_inline int translate6(struct __sk_buff *skb, struct packet6 *p, struct pier_ct6_entry *to)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	if (!(to->flags & PIER_CT_SNAT))
		return rewrite6(skb, p, to) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	/* The way out is known before anything is rewritten, so a packet too
	 * big for it is answered about as the client sent it. */
	rc = fib_out6(skb, p, to, &fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return packet_too_big6(skb, fib.mtu_result);
	if (rewrite6(skb, p, to) < 0)
		return TC_ACT_SHOT;
	return send_out6(skb, &fib, rc);
}

static __always_inline struct pier_ct6_entry *other_direction6(const struct pier_ct6_entry *ct, __u8 proto)
{
	struct pier_ct6_key other = {
		.sport = ct->dport,
		.dport = ct->sport,
		.proto = proto,
	};

	addr6_copy(other.saddr, ct->daddr);
	addr6_copy(other.daddr, ct->saddr);
	return bpf_map_lookup_elem(&pier_ct6_flows, &other);
}

/* A flow lives while traffic goes either way: a forward packet keeps its
 * reply entry alive too (a backend that answers rarely is still there). */
static __always_inline void refresh_peer6(const struct pier_ct6_entry *ct, __u8 proto, __u64 now)
{
	struct pier_ct6_entry *peer;

	if (ct->flags & PIER_CT_REPLY)
		return;
	peer = other_direction6(ct, proto);
	if (peer)
		peer->last_seen_ns = now;
}

static __always_inline void note_closing6(const struct packet6 *p, struct pier_ct6_entry *ct)
{
	struct pier_ct6_entry *peer;

	if (p->tuple.proto != IPPROTO_TCP || !(p->tcp_flags & (TCP_FIN | TCP_RST)) || ct->closing)
		return;
	ct->closing = 1;
	peer = other_direction6(ct, p->tuple.proto);
	if (peer)
		peer->closing = 1;
}

static __always_inline __u32 addr6_hash(const __be32 *a)
{
	return mix32(a[0] ^ mix32(a[1] ^ mix32(a[2] ^ mix32(a[3]))));
}

/* The same on every node: the client and the ports, not the node address. */
static __always_inline __u32 flow_hash6(const struct pier_ct6_key *t)
{
	return mix32(addr6_hash(t->saddr) ^ mix32(((__u32)t->sport << 16 | t->dport) ^ mix32(t->proto)));
}

/* As claim_snat_port (lib/nat4.h), for IPv6. */
static __always_inline int claim_snat_port6(struct pier_ct6_key *reply_key, struct pier_ct6_entry *reply,
					    const struct pier_config *cfg, __u32 hash, __u64 now)
{
	__u32 i;

	if (!pier_snat_ports_ok(cfg))
		return -1;
	for (i = 0; i < SNAT_TRIES; i++) {
		struct pier_ct6_entry *old, *old_forward;
		__u64 seen;

		reply_key->dport = pier_snat_port(cfg, hash, i);
		if (bpf_map_update_elem(&pier_ct6_flows, reply_key, reply, BPF_NOEXIST) == 0)
			return 0;
		old = bpf_map_lookup_elem(&pier_ct6_flows, reply_key);
		if (!old)
			continue;
		seen = old->last_seen_ns;
		if (!pier_ct_expired(seen, old->closing, reply_key->proto, now, cfg))
			continue;
		old_forward = other_direction6(old, reply_key->proto);
		if (old_forward && !pier_ct6_expired(old_forward, reply_key->proto, now, cfg))
			continue;
		if (pier_ct_take_over(&pier_ct6_flows, reply_key, reply, &old->last_seen_ns, seen) == 0)
			return 0;
	}
	return -1;
}

/* A packet of no known flow: for a service reachable from outside? Then a
 * backend is chosen, the flow recorded both ways and its translation written
 * to *fwd (PIER_NEW_FLOW); otherwise the verdict. */
static __always_inline int new_flow6(struct packet6 *p, const struct pier_config *cfg, __u64 now,
				     struct pier_ct6_entry *fwd)
{
	struct pier_lb6_key key = {
		.port = p->tuple.dport,
		.proto = p->tuple.proto,
		.scope = PIER_SCOPE_NODEPORT,
	};
	const struct pier_lb_service *svc;
	const struct pier_lb6_backend *backend;
	struct pier_ct6_entry reply = {};
	struct pier_ct6_key reply_key = {};
	__u32 hash = flow_hash6(&p->tuple), id;

	addr6_copy(key.address, p->tuple.daddr);
	svc = bpf_map_lookup_elem(&pier_lb6_services, &key);
	if (!svc) {
		key.scope = PIER_SCOPE_EXTERNAL;
		svc = bpf_map_lookup_elem(&pier_lb6_services, &key);
	}
	if (!svc)
		return TC_ACT_OK;
	/* ClientIP affinity keys on the client address alone (tagged: never a
	 * socket-LB netns cookie nor an IPv4 client). */
	id = pier_lb_pick_id(svc, (3ULL << 62) | addr6_hash(p->tuple.saddr), hash, &pier_lb6_backends);
	backend = id ? bpf_map_lookup_elem(&pier_lb6_backends, &id) : NULL;
	if (!backend) {
		pier_count(PIER_DROP_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	__builtin_memset(fwd, 0, sizeof(*fwd));
	addr6_copy(fwd->saddr, p->tuple.saddr);
	fwd->sport = p->tuple.sport;
	addr6_copy(fwd->daddr, backend->address);
	fwd->dport = backend->port;
	fwd->backend_id = id;
	fwd->last_seen_ns = now;
	addr6_copy(reply.saddr, p->tuple.daddr);
	reply.sport = p->tuple.dport;
	addr6_copy(reply.daddr, p->tuple.saddr);
	reply.dport = p->tuple.sport;
	reply.backend_id = id;
	reply.last_seen_ns = now;
	reply.flags = PIER_CT_REPLY;
	addr6_copy(reply_key.saddr, backend->address);
	reply_key.sport = backend->port;
	reply_key.proto = p->tuple.proto;
	if (backend->flags & PIER_BACKEND_LOCAL) {
		addr6_copy(reply_key.daddr, p->tuple.saddr);
		reply_key.dport = p->tuple.sport;
		if (pier_ct_insert_reply(&pier_ct6_flows, &reply_key, &reply) < 0)
			return TC_ACT_SHOT;
	} else {
		fwd->flags = PIER_CT_SNAT;
		reply.flags |= PIER_CT_SNAT;
		if (addr6_is_zero(cfg->snat_address6))
			addr6_copy(fwd->saddr, p->tuple.daddr);
		else
			addr6_copy(fwd->saddr, cfg->snat_address6);
		addr6_copy(reply_key.daddr, fwd->saddr);
		if (claim_snat_port6(&reply_key, &reply, cfg, hash, now) < 0) {
			pier_count(PIER_DROP_SNAT_PORTS);
			return TC_ACT_SHOT;
		}
		fwd->sport = reply_key.dport;
	}
	if (pier_ct_commit(&pier_ct6_flows, &p->tuple, fwd, &reply_key) < 0)
		return TC_ACT_SHOT;
	return PIER_NEW_FLOW;
}

/* An ICMPv6 error (unreachable, packet too big, time exceeded) about a known
 * flow is translated like the flow (see translate_icmp_error for IPv4):
 * without it, "packet too big" never reaches the right host and path MTU
 * discovery breaks. */
static __always_inline int translate_icmp6_error(struct __sk_buff *skb, struct packet6 *p, int ingress,
						 const struct pier_config *cfg, __u64 now)
{
	struct ipv6hdr inner;
	struct pier_ct6_key key = {};
	struct pier_ct6_entry *ct, to = {};
	__be16 ports[2];
	__u32 inner_l3 = p->l4 + 8, inner_l4 = inner_l3 + sizeof(inner);
	__u8 type, kind;

	if (bpf_skb_load_bytes(skb, p->l4, &type, 1) < 0 ||
	    (type != ICMPV6_DEST_UNREACH_ && type != ICMPV6_PACKET_TOO_BIG && type != ICMPV6_TIME_EXCEEDED) ||
	    bpf_skb_load_bytes(skb, inner_l3, &inner, sizeof(inner)) < 0 || inner.version != 6 ||
	    (inner.nexthdr != IPPROTO_TCP && inner.nexthdr != IPPROTO_UDP) ||
	    bpf_skb_load_bytes(skb, inner_l4, ports, sizeof(ports)) < 0)
		return TC_ACT_OK;
	/* Conntrack knows the quoted packet by the reverse of its tuple. */
	addr6_copy(key.saddr, inner.daddr.in6_u.u6_addr32);
	addr6_copy(key.daddr, inner.saddr.in6_u.u6_addr32);
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = inner.nexthdr;
	ct = bpf_map_lookup_elem(&pier_ct6_flows, &key);
	if (!ct || pier_ct_expired(ct->last_seen_ns, ct->closing, key.proto, now, cfg))
		return TC_ACT_OK;
	kind = ct->flags & (PIER_CT_REPLY | PIER_CT_SNAT);
	if (ingress == (kind == PIER_CT_REPLY))
		return TC_ACT_OK;
	to = *ct;
	/* The quoted packet as the other side knows it. */
	if (replace_addr6(skb, p->csum_off, inner_l3 + offsetof(struct ipv6hdr, saddr), key.daddr, to.daddr, 0) ||
	    replace_addr6(skb, p->csum_off, inner_l3 + offsetof(struct ipv6hdr, daddr), key.saddr, to.saddr, 0) ||
	    (ports[0] != to.dport &&
	     (bpf_l4_csum_replace(skb, p->csum_off, ports[0], to.dport, 2) ||
	      bpf_skb_store_bytes(skb, inner_l4, &to.dport, 2, 0))) ||
	    (ports[1] != to.sport &&
	     (bpf_l4_csum_replace(skb, p->csum_off, ports[1], to.sport, 2) ||
	      bpf_skb_store_bytes(skb, inner_l4 + 2, &to.sport, 2, 0))))
		return TC_ACT_SHOT;
	/* The error goes to that side, from the peer it quotes (or the node). */
	if (!addr6_eq(p->tuple.saddr, key.saddr) && kind != PIER_CT_SNAT)
		addr6_copy(to.saddr, p->tuple.saddr);
	if (store_addr6(skb, p, L3 + offsetof(struct ipv6hdr, saddr), p->tuple.saddr, to.saddr) ||
	    store_addr6(skb, p, L3 + offsetof(struct ipv6hdr, daddr), p->tuple.daddr, to.daddr))
		return TC_ACT_SHOT;
	if (ingress && (kind & PIER_CT_SNAT))
		return redirect_out6(skb, p, &to);
	return TC_ACT_OK;
}

static __always_inline int pier_ingress6(struct __sk_buff *skb, const struct pier_config *cfg, __u64 now)
{
	struct packet6 p = {};
	struct pier_ct6_entry *ct, to;
	int parsed = parse6(skb, &p), verdict;

	if (parsed == PARSE_ICMP)
		return translate_icmp6_error(skb, &p, 1, cfg, now);
	if (parsed < 0)
		return TC_ACT_OK;
	ct = bpf_map_lookup_elem(&pier_ct6_flows, &p.tuple);
	if (ct && (ct->flags & (PIER_CT_REPLY | PIER_CT_SNAT)) != PIER_CT_REPLY &&
	    !pier_ct_expired(ct->last_seen_ns, ct->closing, p.tuple.proto, now, cfg) &&
	    ((ct->flags & PIER_CT_REPLY) || bpf_map_lookup_elem(&pier_lb6_backends, &ct->backend_id))) {
		ct->last_seen_ns = now;
		refresh_peer6(ct, p.tuple.proto, now);
		note_closing6(&p, ct);
		to = *ct;
		return translate6(skb, &p, &to);
	}
	verdict = new_flow6(&p, cfg, now, &to);
	return verdict == PIER_NEW_FLOW ? translate6(skb, &p, &to) : verdict;
}

static __always_inline int pier_egress6(struct __sk_buff *skb, const struct pier_config *cfg, __u64 now)
{
	struct packet6 p = {};
	struct pier_ct6_entry *ct, *forward, to;
	int parsed = parse6(skb, &p);

	if (parsed == PARSE_ICMP)
		return translate_icmp6_error(skb, &p, 0, cfg, now);
	if (parsed < 0)
		return TC_ACT_OK;
	ct = bpf_map_lookup_elem(&pier_ct6_flows, &p.tuple);
	if (!ct || (ct->flags & (PIER_CT_REPLY | PIER_CT_SNAT)) != PIER_CT_REPLY ||
	    pier_ct_expired(ct->last_seen_ns, ct->closing, p.tuple.proto, now, cfg))
		return TC_ACT_OK;
	forward = other_direction6(ct, p.tuple.proto);
	if (!forward || pier_ct_expired(forward->last_seen_ns, forward->closing, p.tuple.proto, now, cfg))
		return TC_ACT_OK;
	forward->last_seen_ns = now;
	ct->last_seen_ns = now;
	note_closing6(&p, ct);
	to = *ct;
	if (rewrite6(skb, &p, &to) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
