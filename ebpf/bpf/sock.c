/* Socket-level load balancing (cgroup v2 hooks): a connect / sendmsg to a
 * service address is rewritten to a backend before any packet exists, so
 * ClusterIP traffic needs no per-packet NAT and no conntrack. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pier_maps.h"
#include "lib/lb.h"
#include "lib/lb4.h"
#include "lib/lb6.h"
/* Not used here, but every object creates every shared map: either can be loaded first. */
#include "lib/nat.h"
#include "lib/ct4.h"
#include "lib/ct6.h"

/* From <sys/socket.h>, which a BPF target cannot include. */
#define SOCK_DGRAM 2

#define SYS_REJECT 0
#define SYS_PROCEED 1
#define ECONNREFUSED 111

/* A service without endpoints: the connect / send fails at once with
 * ECONNREFUSED (what a client expects from a closed port). Kernels before
 * 5.18 have no bpf_set_retval here: that build (PIER_NO_SET_RETVAL) fails
 * with EPERM instead, still at once. */
static __always_inline int refuse(void)
{
#ifndef PIER_NO_SET_RETVAL
	bpf_set_retval(-ECONNREFUSED);
#endif
	return SYS_REJECT;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	/* TCP, UDP and SCTP sockets carry their protocol; SOCK_STREAM alone would
	 * confuse SCTP with TCP. */
	return (__u8)ctx->protocol;
}

/* Translate ctx's destination if it is a service address. */
static __always_inline int translate4(struct bpf_sock_addr *ctx, int remember)
{
	struct pier_lb4_key key = {
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.proto = sock_proto(ctx),
		.scope = PIER_SCOPE_CLUSTER,
	};
	const struct pier_lb_service *svc;
	const struct pier_lb4_backend *backend;
	__u32 backend_id;

	svc = bpf_map_lookup_elem(&pier_lb4_services, &key);
	if (!svc) {
		/* A NodePort reached from this node: on one of its addresses, or
		 * on loopback (any 127.x), which the wildcard entry stands for. */
		key.scope = PIER_SCOPE_NODEPORT;
		svc = bpf_map_lookup_elem(&pier_lb4_services, &key);
		if (!svc && (bpf_ntohl(key.address) >> 24) == 127) {
			key.address = 0;
			svc = bpf_map_lookup_elem(&pier_lb4_services, &key);
			key.address = ctx->user_ip4;
		}
	}
	if (!svc)
		return SYS_PROCEED; /* not a service: leave it alone */
	/* A random hash: a NodePort's Maglev table is for flows from outside. */
	backend = pier_lb4_pick(svc, bpf_get_netns_cookie(ctx), bpf_get_prandom_u32(), &backend_id);
	if (!backend)
		return refuse();
	if (remember) {
		struct pier_lb4_revnat_key rkey = {
			.cookie = bpf_get_socket_cookie(ctx),
			.address = backend->address,
			.port = backend->port,
		};
		struct pier_lb4_revnat rval = {
			.address = key.address,
			.port = key.port,
		};
		bpf_map_update_elem(&pier_lb4_revnat, &rkey, &rval, BPF_ANY);
	}
	ctx->user_ip4 = backend->address;
	ctx->user_port = backend->port;
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int pier_sock_connect4(struct bpf_sock_addr *ctx)
{
	return translate4(ctx, ctx->type == SOCK_DGRAM);
}

SEC("cgroup/sendmsg4")
int pier_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate4(ctx, 1);
}

/* Replies from a backend appear to come from the service address. */
SEC("cgroup/recvmsg4")
int pier_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct pier_lb4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct pier_lb4_revnat *orig = bpf_map_lookup_elem(&pier_lb4_revnat, &rkey);

	if (orig) {
		ctx->user_ip4 = orig->address;
		ctx->user_port = orig->port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int pier_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return pier_sock_recvmsg4(ctx);
}

/* IPv6: ClusterIPs (and externalIPs / LB IPs reached from inside) only. */
static __always_inline int translate6(struct bpf_sock_addr *ctx, int remember)
{
	struct pier_lb6_key key = {
		.port = (__be16)ctx->user_port,
		.proto = sock_proto(ctx),
		.scope = PIER_SCOPE_CLUSTER,
	};
	const struct pier_lb_service *svc;
	const struct pier_lb6_backend *backend;
	__u32 id;

	key.address[0] = ctx->user_ip6[0];
	key.address[1] = ctx->user_ip6[1];
	key.address[2] = ctx->user_ip6[2];
	key.address[3] = ctx->user_ip6[3];
	svc = bpf_map_lookup_elem(&pier_lb6_services, &key);
	if (!svc)
		return SYS_PROCEED;
	id = pier_lb_pick_id(svc, bpf_get_netns_cookie(ctx), bpf_get_prandom_u32(), &pier_lb6_backends);
	backend = id ? bpf_map_lookup_elem(&pier_lb6_backends, &id) : NULL;
	if (!backend)
		return refuse();
	if (remember) {
		struct pier_lb6_revnat_key rkey = {
			.cookie = bpf_get_socket_cookie(ctx),
			.address = { backend->address[0], backend->address[1], backend->address[2], backend->address[3] },
			.port = backend->port,
		};
		struct pier_lb6_revnat rval = {
			.address = { key.address[0], key.address[1], key.address[2], key.address[3] },
			.port = key.port,
		};
		bpf_map_update_elem(&pier_lb6_revnat, &rkey, &rval, BPF_ANY);
	}
	ctx->user_ip6[0] = backend->address[0];
	ctx->user_ip6[1] = backend->address[1];
	ctx->user_ip6[2] = backend->address[2];
	ctx->user_ip6[3] = backend->address[3];
	ctx->user_port = backend->port;
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int pier_sock_connect6(struct bpf_sock_addr *ctx)
{
	return translate6(ctx, ctx->type == SOCK_DGRAM);
}

SEC("cgroup/sendmsg6")
int pier_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return translate6(ctx, 1);
}

SEC("cgroup/recvmsg6")
int pier_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct pier_lb6_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] },
		.port = (__be16)ctx->user_port,
	};
	struct pier_lb6_revnat *orig = bpf_map_lookup_elem(&pier_lb6_revnat, &rkey);

	if (orig) {
		ctx->user_ip6[0] = orig->address[0];
		ctx->user_ip6[1] = orig->address[1];
		ctx->user_ip6[2] = orig->address[2];
		ctx->user_ip6[3] = orig->address[3];
		ctx->user_port = orig->port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int pier_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return pier_sock_recvmsg6(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
