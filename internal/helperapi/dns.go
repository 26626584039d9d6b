package helperapi

import (
	"net/netip"
)

// MethodDNSListen: DNSListenParams -> DNSListenResult, plus two descriptors
// passed with the reply (SCM_RIGHTS): a UDP socket and a listening TCP
// socket, both bound to Address port 53. Port 53 needs root; this lets an
// unprivileged bangerd answer DNS for its VMs.
const MethodDNSListen = "dns.listen"

// DNSListenParams names the address to bind: a bridge's gateway address.
type DNSListenParams struct {
	Address string `json:"address"`
}

// DNSListenResult answers dns.listen.
type DNSListenResult struct {
	Address string `json:"address"`
	Bridge  string `json:"bridge"`
}

// Validate accepts an IPv4 unicast address; that it sits on one of
// banger's bridges is checked by the helper.
func (p DNSListenParams) Validate() error {
	a, err := netip.ParseAddr(p.Address)
	if err != nil || !a.Is4() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
		return badArg("address", p.Address, "want the IPv4 address of a banger bridge")
	}
	return nil
}
