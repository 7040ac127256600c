/* The IPv4 maps of load balancing (services, backends, reverse translation
 * for socket LB) and the choice of an IPv4 backend. */
#ifndef PIER_LB4_H
#define PIER_LB4_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"
#include "lib/lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pier_lb4_key);
	__type(value, struct pier_lb_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, __u32);
	__type(value, struct pier_lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_lb4_revnat_key);
	__type(value, struct pier_lb4_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb4_revnat SEC(".maps");

/* The IPv4 backend pier_lb_pick_id chooses, and its id in *picked. */
static __always_inline const struct pier_lb4_backend *
pier_lb4_pick(const struct pier_lb_service *svc, __u64 client, __u32 flow_hash, __u32 *picked)
{
	__u32 id = pier_lb_pick_id(svc, client, flow_hash, &pier_lb4_backends);

	if (!id)
		return NULL;
	*picked = id;
	return bpf_map_lookup_elem(&pier_lb4_backends, &id);
}

#endif
