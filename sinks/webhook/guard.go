package webhook

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// ErrForbiddenAddress is returned (wrapped) when a webhook's destination
// resolves to an address the SSRF guard refuses.
var ErrForbiddenAddress = errors.New("destination address not allowed")

// denied are the networks a webhook may not reach unless allowed: they
// are the machine itself, private networks or not unicast destinations.
var denied = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified (this network)"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fc00::/7"), "private (unique local)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// nat64 is the well-known NAT64 prefix: its addresses carry an IPv4
// address, which is checked too.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Guard decides which addresses webhooks may connect to. It refuses
// loopback, private, link-local, carrier-grade NAT, multicast,
// unspecified and reserved addresses, unless an allow-list permits them.
// It checks the address being dialled, after DNS resolution, so a name
// that resolves (or rebinds) to a refused address is caught.
type Guard struct {
	allow []netip.Prefix
}

// NewGuard makes a guard that lets the allow-listed networks through.
func NewGuard(allow []netip.Prefix) *Guard {
	return &Guard{allow: append([]netip.Prefix(nil), allow...)}
}

// Check returns nil when ip may be reached, or an error wrapping
// ErrForbiddenAddress that says why not.
func (g *Guard) Check(ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrForbiddenAddress)
	}
	ip = ip.WithZone("").Unmap()
	for _, p := range g.allow {
		if p.Contains(ip) {
			return nil
		}
	}
	if what := deniedKind(ip); what != "" {
		return fmt.Errorf("%w: %s is %s (allow it in the webhook allow-list if it is meant)", ErrForbiddenAddress, ip, what)
	}
	return nil
}

func deniedKind(ip netip.Addr) string {
	for _, d := range denied {
		if d.p.Contains(ip) {
			return d.what
		}
	}
	if nat64.Contains(ip) {
		b := ip.As16()
		if what := deniedKind(netip.AddrFrom4([4]byte(b[12:]))); what != "" {
			return "NAT64 of a " + what + " address"
		}
	}
	return ""
}

// Control is a net.Dialer Control function: it refuses connections to
// addresses Check refuses.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot read the address %q", ErrForbiddenAddress, address)
	}
	return g.Check(ap.Addr())
}

// ParseAllowList reads an allow-list: networks (10.0.0.0/8) and addresses
// (192.168.1.10), separated by commas or spaces.
func ParseAllowList(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
		if strings.Contains(f, "/") {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("allow-list: %q is not a network like 10.0.0.0/8", f)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("allow-list: %q is not an address or network", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}
