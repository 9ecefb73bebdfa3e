package antifraud

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"
)

// Blacklist kinds.
const (
	KindIP     = "ip"
	KindCIDR   = "cidr"
	KindDevice = "device"
	KindUser   = "user"
)

// Entry is one blacklist entry.
type Entry struct {
	Kind      string     `json:"kind"`
	Value     string     `json:"value"`
	Reason    string     `json:"reason"`
	Author    string     `json:"author"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// Expired reports whether the entry's TTL has passed at now.
func (e *Entry) Expired(now time.Time) bool { return e.ExpiresAt != nil && !now.Before(*e.ExpiresAt) }

// NormalizeEntry validates kind and value and returns the canonical value
// (an IP in its shortest form without an IPv6 zone — the gateway drops zones
// from client addresses — a CIDR masked).
func NormalizeEntry(kind, value string) (string, error) {
	switch kind {
	case KindIP:
		a, err := netip.ParseAddr(value)
		if err != nil {
			return "", fmt.Errorf("ip: %w", err)
		}
		return a.Unmap().WithZone("").String(), nil
	case KindCIDR:
		p, err := netip.ParsePrefix(value)
		if err != nil {
			return "", fmt.Errorf("cidr: %w", err)
		}
		if p.Addr().Is4In6() {
			return "", errors.New("cidr: use the IPv4 form")
		}
		return p.Masked().String(), nil
	case KindDevice, KindUser:
		if value == "" || len(value) > 128 || strings.ContainsAny(value, " \t\r\n") {
			return "", fmt.Errorf("%s: must be 1..128 characters without spaces", kind)
		}
		return value, nil
	}
	return "", fmt.Errorf("kind must be ip, cidr, device or user, got %q", kind)
}

// Blacklist matches requests against entries in memory. Lookups cost a few
// map probes whatever the size: exact maps for IPs, devices and users, and
// for CIDRs one map per prefix length present (at most 33 + 129 probes,
// usually a handful).
type Blacklist struct {
	mu      sync.RWMutex
	ips     map[netip.Addr]*Entry
	cidrs   map[int]map[netip.Prefix]*Entry
	lens    []int // prefix lengths present, longest first
	devices map[string]*Entry
	users   map[string]*Entry
}

// NewBlacklist returns an empty blacklist.
func NewBlacklist() *Blacklist {
	return &Blacklist{ips: map[netip.Addr]*Entry{}, cidrs: map[int]map[netip.Prefix]*Entry{}, devices: map[string]*Entry{}, users: map[string]*Entry{}}
}

// Put adds or replaces an entry (its value must be normalized).
func (b *Blacklist) Put(e Entry) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch e.Kind {
	case KindIP:
		a, err := netip.ParseAddr(e.Value)
		if err != nil {
			return err
		}
		b.ips[a.Unmap()] = &e
	case KindCIDR:
		p, err := netip.ParsePrefix(e.Value)
		if err != nil {
			return err
		}
		p = p.Masked()
		m := b.cidrs[p.Bits()]
		if m == nil {
			m = map[netip.Prefix]*Entry{}
			b.cidrs[p.Bits()] = m
			b.lens = append(b.lens, p.Bits())
			sort.Sort(sort.Reverse(sort.IntSlice(b.lens)))
		}
		m[p] = &e
	case KindDevice:
		b.devices[e.Value] = &e
	case KindUser:
		b.users[e.Value] = &e
	default:
		return fmt.Errorf("antifraud: unknown kind %q", e.Kind)
	}
	return nil
}

// Delete removes an entry; it reports whether it was present.
func (b *Blacklist) Delete(kind, value string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.find(kind, value, true)
}

// Has reports whether an entry of kind and (normalized) value is present.
func (b *Blacklist) Has(kind, value string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.find(kind, value, false)
}

// find looks an entry up by kind and value, removing it when remove is set
// (the caller holds the write lock then, the read lock otherwise).
func (b *Blacklist) find(kind, value string, remove bool) bool {
	var ok bool
	switch kind {
	case KindIP:
		a, err := netip.ParseAddr(value)
		if err != nil {
			return false
		}
		if _, ok = b.ips[a.Unmap()]; ok && remove {
			delete(b.ips, a.Unmap())
		}
	case KindCIDR:
		p, err := netip.ParsePrefix(value)
		if err != nil {
			return false
		}
		if _, ok = b.cidrs[p.Bits()][p.Masked()]; ok && remove {
			delete(b.cidrs[p.Bits()], p.Masked())
		}
	case KindDevice:
		if _, ok = b.devices[value]; ok && remove {
			delete(b.devices, value)
		}
	case KindUser:
		if _, ok = b.users[value]; ok && remove {
			delete(b.users, value)
		}
	}
	return ok
}

// Match returns the first live entry blocking this request, if any.
func (b *Blacklist) Match(ip netip.Addr, device, user string, now time.Time) (*Entry, bool) {
	ip = ip.Unmap()
	b.mu.RLock()
	defer b.mu.RUnlock()
	if e, ok := b.ips[ip]; ok && !e.Expired(now) {
		return e, true
	}
	for _, bits := range b.lens {
		if bits > ip.BitLen() {
			continue
		}
		p, err := ip.Prefix(bits)
		if err != nil {
			continue
		}
		if e, ok := b.cidrs[bits][p]; ok && !e.Expired(now) {
			return e, true
		}
	}
	if e, ok := b.devices[device]; ok && !e.Expired(now) {
		return e, true
	}
	if e, ok := b.users[user]; ok && !e.Expired(now) {
		return e, true
	}
	return nil, false
}

// Len is the number of entries (expired ones included until removed).
func (b *Blacklist) Len() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	n := len(b.ips) + len(b.devices) + len(b.users)
	for _, m := range b.cidrs {
		n += len(m)
	}
	return n
}

// List returns up to max live entries, sorted by kind and value.
func (b *Blacklist) List(now time.Time, max int) []Entry {
	b.mu.RLock()
	var out []Entry
	add := func(e *Entry) {
		if !e.Expired(now) && len(out) < max {
			out = append(out, *e)
		}
	}
	for _, e := range b.ips {
		add(e)
	}
	for _, m := range b.cidrs {
		for _, e := range m {
			add(e)
		}
	}
	for _, e := range b.devices {
		add(e)
	}
	for _, e := range b.users {
		add(e)
	}
	b.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Value < out[j].Value
	})
	return out
}
