/* The BPF map layouts of pier-agent, defined once here and mirrored in Rust
 * (ebpf/src/maps.rs; ebpf/tests/btf_layout.rs compares every member's offset
 * and size with the BTF of the built objects). Names follow
 * pier_<area>_<noun>: lb4 / lb6 / ct4 / ct6 for one address family, lb (load
 * balancing) and nat (the tc programs' configuration and counters) for what
 * both families share. Maps are pinned under /sys/fs/bpf/pier/. */
#ifndef PIER_MAPS_H
#define PIER_MAPS_H

#include <linux/types.h>

#define PIER_PROTO_TCP 6
#define PIER_PROTO_UDP 17
#define PIER_PROTO_SCTP 132

/* Where a virtual address is reachable: every service address is keyed by
 * scope so a NodePort is never matched for cluster-internal traffic. */
#define PIER_SCOPE_CLUSTER 0 /* ClusterIP, externalIP, LB IP */
#define PIER_SCOPE_NODEPORT 1 /* any node address, the NodePort */
#define PIER_SCOPE_EXTERNAL 2 /* externalIP / LB IP reached from outside the node */

/* Service flags. */
#define PIER_SVC_AFFINITY (1 << 0)      /* sessionAffinity: ClientIP */
#define PIER_SVC_LOCAL_EXTERNAL (1 << 1) /* externalTrafficPolicy: Local */
#define PIER_SVC_LOCAL_INTERNAL (1 << 2) /* internalTrafficPolicy: Local */
#define PIER_SVC_MAGLEV (1 << 3)         /* pick by pier_lb_maglev, not at random */

/* Key of pier_lb4_services: a virtual IPv4 address, port and protocol. */
struct pier_lb4_key {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 scope;
};

/* Value of pier_lb4_services and pier_lb6_services. Backends are slots
 * 1..backend_count of the service in pier_lb_slots (slot 0 is never used: it
 * means "none"). Service and backend ids are unique across both families. */
struct pier_lb_service {
	__u32 service_id;
	__u16 backend_count;
	__u16 flags;
	__u32 affinity_timeout_s;
	__u32 maglev_size; /* entries used in this service's pier_lb_maglev table */
};

/* Key of pier_lb_slots (value: a backend id, __u32). */
struct pier_lb_slot_key {
	__u32 service_id;
	__u32 slot;
};

/* Value of pier_lb4_backends, keyed by a backend id (__u32). */
struct pier_lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags; /* PIER_BACKEND_* */
};

#define PIER_BACKEND_TERMINATING (1 << 0)
#define PIER_BACKEND_LOCAL (1 << 1)

/* IPv6: the same service value (struct pier_lb_service) and the same slot,
 * affinity and Maglev maps as IPv4. */
struct pier_lb6_key {
	__be32 address[4];
	__be16 port;
	__u8 proto;
	__u8 scope;
};

struct pier_lb6_backend {
	__be32 address[4];
	__be16 port;
	__u8 proto;
	__u8 flags; /* PIER_BACKEND_* */
};

struct pier_lb6_revnat_key {
	__u64 cookie;
	__be32 address[4];
	__be16 port;
	__u16 pad[3];
};

struct pier_lb6_revnat {
	__be32 address[4];
	__be16 port;
	__u16 pad;
};

/* Reverse translation for connected / unconnected UDP sockets: keyed by the
 * socket cookie and the backend, gives the virtual address the application
 * thinks it talks to (recvmsg4, getpeername4). */
struct pier_lb4_revnat_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct pier_lb4_revnat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* sessionAffinity: ClientIP. Socket LB identifies a client by its network
 * namespace (a pod), as its source address is not known at connect; the tc
 * programs by its address, tagged in the top bits so the two never meet. */
struct pier_lb_affinity_key {
	__u64 netns_cookie;
	__u32 service_id;
	__u32 pad;
};

struct pier_lb_affinity {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/* Value of pier_lb_maglev, keyed by service id: the Maglev lookup table of
 * a service reached from outside, as backend ids. Only the first maglev_size
 * entries (a prime, at most PIER_MAGLEV_MAX) are used. */
#define PIER_MAGLEV_MAX 16381
struct pier_lb_maglev {
	__u32 backend_ids[PIER_MAGLEV_MAX];
};

/* Conntrack for traffic from outside the node (tc programs). Key: a packet's
 * tuple as it is seen on the wire before translation. */
struct pier_ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What a packet of that tuple is rewritten to, in full. */
struct pier_ct4_entry {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 backend_id; /* the chosen backend (forward entries) */
	__u64 last_seen_ns;
	__u8 flags; /* PIER_CT_* */
	__u8 closing; /* a FIN or RST was seen: expires after closing_timeout_s */
	__u8 pad[6];
};

/* IPv6 conntrack (same meaning as the IPv4 key and entry). */
struct pier_ct6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct pier_ct6_entry {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u32 backend_id;
	__u64 last_seen_ns;
	__u8 flags;
	__u8 closing;
	__u8 pad[6];
};

#define PIER_CT_REPLY (1 << 0)  /* a reply: from the backend towards the client */
#define PIER_CT_SNAT (1 << 1)   /* source rewritten to the node: route it ourselves */

/* pier_lb_ids, a one-entry array: the agent's id counters, kept across agent
 * restarts so an id is never given to a second service or backend (a
 * conntrack entry naming a departed backend must not find a new one). */
struct pier_ids {
	__u32 next_service;
	__u32 next_backend;
};

/* pier_nat_config, a one-entry array written by the agent. */
struct pier_config {
	__be32 snat_address; /* the node's address for SNAT (0: the address hit) */
	__u16 snat_port_min; /* SNAT ports, host order, outside the ephemeral range */
	__u16 snat_port_max;
	__u32 tcp_timeout_s; /* idle conntrack entries older than this are ignored */
	__u32 udp_timeout_s;
	__u32 closing_timeout_s; /* TCP flows after a FIN or RST */
	__u32 pad;
	__be32 snat_address6[4]; /* the node's IPv6 address for SNAT (zero: the address hit) */
};

#endif
