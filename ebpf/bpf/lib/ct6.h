/* IPv6 conntrack for the tc programs (see ct4.h). */
#ifndef PIER_CT6_H
#define PIER_CT6_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"
#include "lib/nat.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_ct6_key);
	__type(value, struct pier_ct6_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_ct6_flows SEC(".maps");

static __always_inline int pier_ct6_expired(const struct pier_ct6_entry *e, __u8 proto, __u64 now,
					    const struct pier_config *cfg)
{
	return pier_ct_expired(e->last_seen_ns, e->closing, proto, now, cfg);
}

#endif
