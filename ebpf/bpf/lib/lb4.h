/* Service lookup and backend choice shared by the IPv4 programs. */
#ifndef PIER_LB4_H
#define PIER_LB4_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pier_lb4_key);
	__type(value, struct pier_lb4_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct pier_lb4_slot_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb4_slots SEC(".maps");

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

/* A random backend of the service, or NULL when it has none. */
static __always_inline const struct pier_lb4_backend *
pier_lb4_pick(const struct pier_lb4_service *svc)
{
	struct pier_lb4_slot_key slot = {
		.service_id = svc->service_id,
		.slot = (bpf_get_prandom_u32() % svc->backend_count) + 1,
	};
	__u32 *backend_id;

	if (svc->backend_count == 0)
		return NULL;
	backend_id = bpf_map_lookup_elem(&pier_lb4_slots, &slot);
	if (!backend_id)
		return NULL;
	return bpf_map_lookup_elem(&pier_lb4_backends, backend_id);
}

#endif
