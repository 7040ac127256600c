/* The IPv6 maps of load balancing (services share the value layout, the
 * slots, the affinity and the Maglev maps with IPv4: see lib/lb.h). */
#ifndef PIER_LB6_H
#define PIER_LB6_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"
#include "lib/lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pier_lb6_key);
	__type(value, struct pier_lb_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb6_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, __u32);
	__type(value, struct pier_lb6_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb6_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_lb6_revnat_key);
	__type(value, struct pier_lb6_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb6_revnat SEC(".maps");

#endif
