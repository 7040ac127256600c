/* IPv4 from outside, for tc_nodeport.c: a new flow to a NodePort, LB IP or
 * externalIP is DNATed to a backend (and SNATed to the node when the backend
 * is on another node, so the reply comes back here); conntrack entries
 * translate the rest of the flow and its replies, and ICMP errors about it.
 * Anything pier cannot parse with certainty is left alone, never half
 * translated. */
#ifndef PIER_NAT4_H
#define PIER_NAT4_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pier_maps.h"
#include "lib/nat.h"
#include "lib/lb4.h"
#include "lib/ct4.h"

#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMP_TIME_EXCEEDED 11

/* An ICMP "destination unreachable" header (<linux/icmp.h> pulls in libc). */
struct icmp_unreach {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu;
};

/* Where things are in the packet, and its tuple before translation. */
struct packet {
	__u32 l3;
	__u32 l4;
	__u32 csum_off;
	struct pier_ct4_key tuple;
	__u8 tcp_flags;
};

/* 0 when the packet is IPv4 TCP / UDP with complete, consistent headers and
 * not a fragment; anything else is not ours to translate. */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr ip;
	__be16 ports[2];
	__u32 ihl, end, l4_len = 8;
	__be16 h_proto;
	__u8 doff;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &h_proto, 2) < 0 ||
	    h_proto != bpf_htons(ETH_P_IP))
		return -1;
	p->l3 = L3;
	if (bpf_skb_load_bytes(skb, p->l3, &ip, sizeof(ip)) < 0)
		goto malformed;
	ihl = ip.ihl * 4;
	end = p->l3 + bpf_ntohs(ip.tot_len);
	if (ip.version != 4 || ihl < sizeof(ip) || bpf_ntohs(ip.tot_len) < ihl || end > skb->len)
		goto malformed;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP && ip.protocol != IPPROTO_ICMP)
		return -1;
	if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		/* Only the first fragment has ports: translating it alone would
		 * split the datagram between two destinations. */
		pier_count(PIER_PASS_FRAGMENT);
		return -1;
	}
	p->l4 = p->l3 + ihl;
	p->tuple.saddr = ip.saddr;
	p->tuple.daddr = ip.daddr;
	p->tuple.proto = ip.protocol;
	if (ip.protocol == IPPROTO_ICMP)
		return PARSE_ICMP;
	if (ip.protocol == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, p->l4 + 12, &doff, 1) < 0 ||
		    bpf_skb_load_bytes(skb, p->l4 + 13, &p->tcp_flags, 1) < 0)
			goto malformed;
		l4_len = (doff >> 4) * 4;
		if (l4_len < 20)
			goto malformed;
	}
	if (p->l4 + l4_len > end || bpf_skb_load_bytes(skb, p->l4, ports, sizeof(ports)) < 0)
		goto malformed;
	p->csum_off = p->l4 + (ip.protocol == IPPROTO_TCP ? 16 : 6);
	p->tuple.sport = ports[0];
	p->tuple.dport = ports[1];
	return 0;
malformed:
	pier_count(PIER_PASS_MALFORMED);
	return -1;
}

/* Rewrites the packet's addresses and ports to `to`'s, fixing the IP and the
 * transport checksums incrementally. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct packet *p,
				   const struct pier_ct4_entry *to)
{
	__u64 mangled0 = p->tuple.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 ip_check = p->l3 + offsetof(struct iphdr, check);

	if (to->saddr != p->tuple.saddr &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->tuple.saddr, to->saddr, BPF_F_PSEUDO_HDR | mangled0 | 4) ||
	     bpf_l3_csum_replace(skb, ip_check, p->tuple.saddr, to->saddr, 4) ||
	     bpf_skb_store_bytes(skb, p->l3 + offsetof(struct iphdr, saddr), &to->saddr, 4, 0)))
		return -1;
	if (to->daddr != p->tuple.daddr &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->tuple.daddr, to->daddr, BPF_F_PSEUDO_HDR | mangled0 | 4) ||
	     bpf_l3_csum_replace(skb, ip_check, p->tuple.daddr, to->daddr, 4) ||
	     bpf_skb_store_bytes(skb, p->l3 + offsetof(struct iphdr, daddr), &to->daddr, 4, 0)))
		return -1;
	if (to->sport != p->tuple.sport &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->tuple.sport, to->sport, mangled0 | 2) ||
	     bpf_skb_store_bytes(skb, p->l4, &to->sport, 2, 0)))
		return -1;
	if (to->dport != p->tuple.dport &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->tuple.dport, to->dport, mangled0 | 2) ||
	     bpf_skb_store_bytes(skb, p->l4 + 2, &to->dport, 2, 0)))
		return -1;
	return 0;
}

/* Where a packet for `to` leaves the node: the interface, the MACs, and
 * whether it fits that interface's MTU (BPF_FIB_LKUP_RET_FRAG_NEEDED). */
static __always_inline long fib_out(struct __sk_buff *skb, const struct packet *p,
				    const struct pier_ct4_entry *to, struct bpf_fib_lookup *fib)
{
	fib->family = AF_INET;
	fib->l4_protocol = p->tuple.proto;
	fib->ipv4_src = to->saddr;
	fib->ipv4_dst = to->daddr;
	fib->ifindex = skb->ingress_ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/* Sends a packet whose source is now the node itself straight out of the
 * interface `fib` found: the stack would drop it as a martian (local source
 * on input). Decrements the TTL as a router does. */
static __always_inline int send_out(struct __sk_buff *skb, const struct packet *p,
				    const struct bpf_fib_lookup *fib, long rc)
{
	__u32 ip_check = p->l3 + offsetof(struct iphdr, check);
	__be16 ttl_proto_old, ttl_proto_new;
	__u8 ttl;

	if (bpf_skb_load_bytes(skb, p->l3 + offsetof(struct iphdr, ttl), &ttl_proto_old, 2) < 0)
		return TC_ACT_SHOT;
	ttl = *(__u8 *)&ttl_proto_old;
	if (ttl <= 1)
		return TC_ACT_SHOT;
	ttl_proto_new = ttl_proto_old;
	*(__u8 *)&ttl_proto_new = ttl - 1;
	if (bpf_l3_csum_replace(skb, ip_check, ttl_proto_old, ttl_proto_new, 2) ||
	    bpf_skb_store_bytes(skb, p->l3 + offsetof(struct iphdr, ttl), &ttl_proto_new, 2, 0))
		return TC_ACT_SHOT;
	return pier_fib_redirect(skb, fib, rc);
}

static __always_inline int redirect_out(struct __sk_buff *skb, const struct packet *p,
					const struct pier_ct4_entry *to)
{
	struct bpf_fib_lookup fib = {};

	return send_out(skb, p, &fib, fib_out(skb, p, to, &fib));
}

/* Scratch space for building a "fragmentation needed", off the stack (see
 * the budget in tc_nodeport.c). Per CPU, not pinned. */
struct frag4_scratch {
	struct ethhdr eth;
	unsigned char mac[ETH_ALEN];
	struct iphdr orig;
	struct iphdr ip;
	struct icmp_unreach icmp;
	__u8 quoted[60 + 8]; /* the longest IP header and 8 transport bytes */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frag4_scratch);
} pier_nat_scratch4 SEC(".maps");

/* The client's packet does not fit the way to a remote backend (a tunnel
 * with a smaller MTU, say) and may not be fragmented: answer it, as a router
 * would, with an ICMP "fragmentation needed" carrying that MTU, built in
 * place from the packet itself, so path MTU discovery works through the
 * NodePort instead of black-holing big segments. */
static __always_inline int frag_needed(struct __sk_buff *skb, const struct packet *p, __u16 mtu)
{
	__u32 zero = 0, quoted_len;
	struct frag4_scratch *b = bpf_map_lookup_elem(&pier_nat_scratch4, &zero);
	__s64 sum;

	if (!b || bpf_skb_load_bytes(skb, 0, &b->eth, sizeof(b->eth)) < 0 ||
	    bpf_skb_load_bytes(skb, p->l3, &b->orig, sizeof(b->orig)) < 0)
		return TC_ACT_SHOT;
	/* Kernels before 5.12 do not report the MTU: no answer beats a wrong one. */
	if (mtu == 0 || !(b->orig.frag_off & bpf_htons(IP_DF))) {
		/* Fragmenting is not ours to do: dropped, counted. */
		pier_count(PIER_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	quoted_len = b->orig.ihl * 4 + 8;
	if (quoted_len > sizeof(b->quoted) || bpf_skb_load_bytes(skb, p->l3, b->quoted, quoted_len & 0x7f) < 0)
		return TC_ACT_SHOT;
	/* Room for a new IP and ICMP header before the quoted packet, which is
	 * cut after its first 8 transport bytes. */
	if (bpf_skb_adjust_room(skb, sizeof(b->ip) + sizeof(b->icmp), BPF_ADJ_ROOM_MAC, 0) ||
	    bpf_skb_change_tail(skb, sizeof(b->eth) + sizeof(b->ip) + sizeof(b->icmp) + quoted_len, 0)) {
		pier_count(PIER_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(b->mac, b->eth.h_dest, ETH_ALEN);
	__builtin_memcpy(b->eth.h_dest, b->eth.h_source, ETH_ALEN);
	__builtin_memcpy(b->eth.h_source, b->mac, ETH_ALEN);
	__builtin_memset(&b->ip, 0, sizeof(b->ip));
	b->ip.version = 4;
	b->ip.ihl = 5;
	b->ip.ttl = 64;
	b->ip.protocol = IPPROTO_ICMP;
	b->ip.tot_len = bpf_htons(sizeof(b->ip) + sizeof(b->icmp) + quoted_len);
	b->ip.saddr = b->orig.daddr;
	b->ip.daddr = b->orig.saddr;
	b->ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&b->ip, sizeof(b->ip), 0));
	__builtin_memset(&b->icmp, 0, sizeof(b->icmp));
	b->icmp.type = ICMP_DEST_UNREACH;
	b->icmp.code = ICMP_FRAG_NEEDED;
	b->icmp.mtu = bpf_htons(mtu);
	sum = bpf_csum_diff(0, 0, (__be32 *)&b->icmp, sizeof(b->icmp), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	sum = bpf_csum_diff(0, 0, (__be32 *)b->quoted, quoted_len & 0x7c, sum);
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

/* The entry of a flow's other direction: its key is this entry's rewrite,
 * reversed. */
static __always_inline struct pier_ct4_entry *other_direction(const struct pier_ct4_entry *ct, __u8 proto)
{
	struct pier_ct4_key other = {
		.saddr = ct->daddr,
		.daddr = ct->saddr,
		.sport = ct->dport,
		.dport = ct->sport,
		.proto = proto,
	};

	return bpf_map_lookup_elem(&pier_ct4_flows, &other);
}

/* A FIN or RST ends a TCP flow: both directions' entries get the short
 * closing timeout, so the tuple (and its SNAT port) is free again soon. */
static __always_inline void note_closing(const struct packet *p, struct pier_ct4_entry *ct)
{
	struct pier_ct4_entry *peer;

	if (p->tuple.proto != IPPROTO_TCP || !(p->tcp_flags & (TCP_FIN | TCP_RST)) || ct->closing)
		return;
	ct->closing = 1;
	peer = other_direction(ct, p->tuple.proto);
	if (peer)
		peer->closing = 1;
}

static __always_inline int translate(struct __sk_buff *skb, const struct packet *p,
				     const struct pier_ct4_entry *to)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	if (!(to->flags & PIER_CT_SNAT))
		return rewrite(skb, p, to) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	/* The way out is known before anything is rewritten, so a packet too
	 * big for it is answered about as the client sent it. */
	rc = fib_out(skb, p, to, &fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return frag_needed(skb, p, fib.mtu_result);
	if (rewrite(skb, p, to) < 0)
		return TC_ACT_SHOT;
	return send_out(skb, p, &fib, rc);
}

/* The Maglev flow hash: the same on every node (the node address hit is left
 * out, so a NodePort flow hashes alike whichever node receives it). */
static __always_inline __u32 flow_hash(const struct pier_ct4_key *t)
{
	return mix32(t->saddr ^ mix32(((__u32)t->sport << 16 | t->dport) ^ mix32(t->proto)));
}

/* Claims a free SNAT port for the reply tuple `reply_key` (its dport is set
 * to the port claimed) by inserting the reply entry with BPF_NOEXIST: on a
 * free tuple, or on one whose previous flow is idle both ways, taken over
 * with pier_ct_take_over (never overwritten: two CPUs must not both win). */
static __always_inline int claim_snat_port(struct pier_ct4_key *reply_key, struct pier_ct4_entry *reply,
					   const struct pier_config *cfg, __u32 hash, __u64 now)
{
	__u32 i;

	if (!pier_snat_ports_ok(cfg))
		return -1;
	for (i = 0; i < SNAT_TRIES; i++) {
		struct pier_ct4_entry *old, *old_forward;
		__u64 seen;

		reply_key->dport = pier_snat_port(cfg, hash, i);
		if (bpf_map_update_elem(&pier_ct4_flows, reply_key, reply, BPF_NOEXIST) == 0)
			return 0;
		old = bpf_map_lookup_elem(&pier_ct4_flows, reply_key);
		if (!old)
			continue;
		seen = old->last_seen_ns;
		if (!pier_ct_expired(seen, old->closing, reply_key->proto, now, cfg))
			continue;
		/* One-way traffic (e.g. UDP to a remote backend) only refreshes
		 * the forward entry: the port is free only if the old flow's
		 * forward direction is quiet too. */
		old_forward = other_direction(old, reply_key->proto);
		if (old_forward && !pier_ct4_expired(old_forward, reply_key->proto, now, cfg))
			continue;
		if (pier_ct_take_over(&pier_ct4_flows, reply_key, reply, &old->last_seen_ns, seen) == 0)
			return 0;
	}
	return -1;
}

/* A packet that belongs to no known flow: is it for a service reachable from
 * outside? Then a backend is chosen, the flow recorded both ways and its
 * translation written to *fwd (PIER_NEW_FLOW); otherwise the verdict. */
static __always_inline int new_flow(const struct packet *p, const struct pier_config *cfg, __u64 now,
				    struct pier_ct4_entry *fwd)
{
	struct pier_lb4_key key = {
		.address = p->tuple.daddr,
		.port = p->tuple.dport,
		.proto = p->tuple.proto,
		.scope = PIER_SCOPE_NODEPORT,
	};
	const struct pier_lb_service *svc;
	const struct pier_lb4_backend *backend;
	struct pier_ct4_entry reply = {};
	struct pier_ct4_key reply_key = {};
	__u32 hash = flow_hash(&p->tuple), backend_id = 0;

	svc = bpf_map_lookup_elem(&pier_lb4_services, &key);
	if (!svc) {
		key.scope = PIER_SCOPE_EXTERNAL;
		svc = bpf_map_lookup_elem(&pier_lb4_services, &key);
	}
	if (!svc)
		return TC_ACT_OK; /* not a service: the node's own traffic */
	/* ClientIP affinity keys on the client address, tagged so it never
	 * collides with a socket-LB netns cookie. */
	backend = pier_lb4_pick(svc, (1ULL << 63) | p->tuple.saddr, hash, &backend_id);
	if (!backend) {
		pier_count(PIER_DROP_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	__builtin_memset(fwd, 0, sizeof(*fwd));
	fwd->saddr = p->tuple.saddr;
	fwd->sport = p->tuple.sport;
	fwd->daddr = backend->address;
	fwd->dport = backend->port;
	fwd->backend_id = backend_id;
	fwd->last_seen_ns = now;
	/* Replies come from the backend and must look as if they came from the
	 * address and port the client used. */
	reply.saddr = p->tuple.daddr;
	reply.sport = p->tuple.dport;
	reply.daddr = p->tuple.saddr;
	reply.dport = p->tuple.sport;
	reply.backend_id = backend_id;
	reply.last_seen_ns = now;
	reply.flags = PIER_CT_REPLY;
	reply_key.saddr = backend->address;
	reply_key.sport = backend->port;
	reply_key.proto = p->tuple.proto;
	if (backend->flags & PIER_BACKEND_LOCAL) {
		/* A pod on this node: DNAT only, the client address is kept and
		 * the reply leaves through the egress program. */
		reply_key.daddr = p->tuple.saddr;
		reply_key.dport = p->tuple.sport;
		if (pier_ct_insert_reply(&pier_ct4_flows, &reply_key, &reply) < 0)
			return TC_ACT_SHOT;
	} else {
		fwd->flags = PIER_CT_SNAT;
		reply.flags |= PIER_CT_SNAT;
		fwd->saddr = cfg->snat_address ? cfg->snat_address : p->tuple.daddr;
		reply_key.daddr = fwd->saddr;
		if (claim_snat_port(&reply_key, &reply, cfg, hash, now) < 0) {
			pier_count(PIER_DROP_SNAT_PORTS);
			return TC_ACT_SHOT;
		}
		fwd->sport = reply_key.dport;
	}
	if (pier_ct_commit(&pier_ct4_flows, &p->tuple, fwd, &reply_key) < 0)
		return TC_ACT_SHOT;
	return PIER_NEW_FLOW;
}

/* An ICMP error (destination unreachable, time exceeded) quoting a packet of
 * a translated flow: where the quote is and the quoted packet's tuple. */
struct icmp_error {
	__u32 icmp;
	__u32 inner_l3;
	__u32 inner_l4;
	struct pier_ct4_key inner;
};

static __always_inline int parse_icmp_error(struct __sk_buff *skb, const struct packet *p, struct icmp_error *e)
{
	struct iphdr inner;
	__be16 ports[2];
	__u8 type;

	if (bpf_skb_load_bytes(skb, p->l4, &type, 1) < 0 ||
	    (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED))
		return -1;
	e->icmp = p->l4;
	e->inner_l3 = p->l4 + 8;
	if (bpf_skb_load_bytes(skb, e->inner_l3, &inner, sizeof(inner)) < 0 || inner.version != 4 ||
	    inner.ihl < 5 || (inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP))
		return -1;
	e->inner_l4 = e->inner_l3 + inner.ihl * 4;
	if (bpf_skb_load_bytes(skb, e->inner_l4, ports, sizeof(ports)) < 0)
		return -1;
	e->inner.saddr = inner.saddr;
	e->inner.daddr = inner.daddr;
	e->inner.sport = ports[0];
	e->inner.dport = ports[1];
	e->inner.proto = inner.protocol;
	return 0;
}

/* Replaces 4 bytes inside the ICMP payload at `off`, keeping the ICMP checksum right. */
static __always_inline int icmp_store32(struct __sk_buff *skb, const struct icmp_error *e, __u32 off, __be32 old, __be32 new)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, e->icmp + 2, old, new, 4) || bpf_skb_store_bytes(skb, off, &new, 4, 0))
		return -1;
	return 0;
}

static __always_inline int icmp_store16(struct __sk_buff *skb, const struct icmp_error *e, __u32 off, __be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, e->icmp + 2, old, new, 2) || bpf_skb_store_bytes(skb, off, &new, 2, 0))
		return -1;
	return 0;
}

/* An address of the quoted IP header: the quoted header's checksum and the
 * ICMP checksum (which covers both) follow. */
static __always_inline int icmp_inner_addr(struct __sk_buff *skb, const struct icmp_error *e, __u32 field,
					   __be32 old, __be32 new)
{
	__u32 check = e->inner_l3 + offsetof(struct iphdr, check);
	__be16 before, after;

	if (old == new)
		return 0;
	if (bpf_skb_load_bytes(skb, check, &before, 2) < 0 || bpf_l3_csum_replace(skb, check, old, new, 4) ||
	    bpf_skb_load_bytes(skb, check, &after, 2) < 0 ||
	    bpf_l4_csum_replace(skb, e->icmp + 2, before, after, 2))
		return -1;
	return icmp_store32(skb, e, e->inner_l3 + field, old, new);
}

/* Translates an ICMP error about a known flow the way the flow itself is
 * translated: the quoted packet becomes the one the other side sent or
 * received, and the error goes to that side. Conntrack knows the quoted
 * packet by the reverse of its tuple (the direction the error travels). */
static __always_inline int translate_icmp_error(struct __sk_buff *skb, struct packet *p, int ingress,
						const struct pier_config *cfg, __u64 now)
{
	struct pier_ct4_key key = {};
	struct pier_ct4_entry *ct, to = {};
	struct icmp_error e = {};
	__u32 ip_check = p->l3 + offsetof(struct iphdr, check);
	__u8 kind;

	if (parse_icmp_error(skb, p, &e) < 0)
		return TC_ACT_OK;
	key.saddr = e.inner.daddr;
	key.daddr = e.inner.saddr;
	key.sport = e.inner.dport;
	key.dport = e.inner.sport;
	key.proto = e.inner.proto;
	ct = bpf_map_lookup_elem(&pier_ct4_flows, &key);
	if (!ct || pier_ct4_expired(ct, key.proto, now, cfg))
		return TC_ACT_OK;
	kind = ct->flags & (PIER_CT_REPLY | PIER_CT_SNAT);
	/* Same split as for the flows: replies from local pods are egress's. */
	if (ingress == (kind == PIER_CT_REPLY))
		return TC_ACT_OK;
	/* The quoted packet as the other side knows it. */
	if (icmp_inner_addr(skb, &e, offsetof(struct iphdr, saddr), e.inner.saddr, ct->daddr) ||
	    icmp_inner_addr(skb, &e, offsetof(struct iphdr, daddr), e.inner.daddr, ct->saddr) ||
	    icmp_store16(skb, &e, e.inner_l4, e.inner.sport, ct->dport) ||
	    icmp_store16(skb, &e, e.inner_l4 + 2, e.inner.dport, ct->sport))
		return TC_ACT_SHOT;
	/* The error goes to that side, from whom it would have come there: the
	 * peer it quotes, or the node when the flow is SNATed. */
	to.daddr = ct->daddr;
	to.saddr = p->tuple.saddr;
	if (p->tuple.saddr == e.inner.daddr || kind == PIER_CT_SNAT)
		to.saddr = ct->saddr;
	if ((to.saddr != p->tuple.saddr &&
	     (bpf_l3_csum_replace(skb, ip_check, p->tuple.saddr, to.saddr, 4) ||
	      bpf_skb_store_bytes(skb, p->l3 + offsetof(struct iphdr, saddr), &to.saddr, 4, 0))) ||
	    (to.daddr != p->tuple.daddr &&
	     (bpf_l3_csum_replace(skb, ip_check, p->tuple.daddr, to.daddr, 4) ||
	      bpf_skb_store_bytes(skb, p->l3 + offsetof(struct iphdr, daddr), &to.daddr, 4, 0))))
		return TC_ACT_SHOT;
	if (ingress && (kind & PIER_CT_SNAT))
		return redirect_out(skb, p, &to);
	return TC_ACT_OK;
}

/* Traffic arriving from outside: known flows (and replies to SNATed ones)
 * are translated by conntrack; new ones may be for a service. */
static __always_inline int pier_ingress4(struct __sk_buff *skb, const struct pier_config *cfg, __u64 now)
{
	struct packet p = {};
	struct pier_ct4_entry *ct, to;
	int parsed = parse(skb, &p), verdict;

	if (parsed == PARSE_ICMP)
		return translate_icmp_error(skb, &p, 1, cfg, now);
	if (parsed < 0)
		return TC_ACT_OK;
	ct = bpf_map_lookup_elem(&pier_ct4_flows, &p.tuple);
	/* Entries for replies from local pods belong to the egress program. */
	if (ct && (ct->flags & (PIER_CT_REPLY | PIER_CT_SNAT)) != PIER_CT_REPLY &&
	    !pier_ct4_expired(ct, p.tuple.proto, now, cfg)) {
		/* A flow whose backend left is balanced again (ids are never reused). */
		if ((ct->flags & PIER_CT_REPLY) || bpf_map_lookup_elem(&pier_lb4_backends, &ct->backend_id)) {
			struct pier_ct4_entry *peer;

			ct->last_seen_ns = now;
			/* A flow lives while traffic goes either way: a forward
			 * packet keeps its reply entry alive too. */
			if (!(ct->flags & PIER_CT_REPLY) && (peer = other_direction(ct, p.tuple.proto)))
				peer->last_seen_ns = now;
			note_closing(&p, ct);
			to = *ct;
			return translate(skb, &p, &to);
		}
	}
	verdict = new_flow(&p, cfg, now, &to);
	return verdict == PIER_NEW_FLOW ? translate(skb, &p, &to) : verdict;
}

/* Traffic leaving towards outside: replies from local pods to a DNATed flow
 * get the service address back as their source. */
static __always_inline int pier_egress4(struct __sk_buff *skb, const struct pier_config *cfg, __u64 now)
{
	struct packet p = {};
	struct pier_ct4_entry *ct, *forward, to;
	int parsed = parse(skb, &p);

	if (parsed == PARSE_ICMP)
		return translate_icmp_error(skb, &p, 0, cfg, now);
	if (parsed < 0)
		return TC_ACT_OK;
	ct = bpf_map_lookup_elem(&pier_ct4_flows, &p.tuple);
	if (!ct || (ct->flags & (PIER_CT_REPLY | PIER_CT_SNAT)) != PIER_CT_REPLY ||
	    pier_ct4_expired(ct, p.tuple.proto, now, cfg))
		return TC_ACT_OK;
	/* Only while the client's side of the flow is known: a pod's own later
	 * connection that reuses the tuple must not be rewritten. */
	forward = other_direction(ct, p.tuple.proto);
	if (!forward || pier_ct4_expired(forward, p.tuple.proto, now, cfg))
		return TC_ACT_OK;
	/* Traffic either way keeps the flow alive. */
	forward->last_seen_ns = now;
	ct->last_seen_ns = now;
	note_closing(&p, ct);
	to = *ct;
	if (rewrite(skb, &p, &to) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
