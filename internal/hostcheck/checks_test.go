package hostcheck

import (
	"compress/gzip"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestSubnetClashes(t *testing.T) {
	routes := []Route{
		{Iface: "eth0", Prefix: netip.MustParsePrefix("0.0.0.0/0")},
		{Iface: "eth0", Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		{Iface: "banger0", Prefix: netip.MustParsePrefix("172.30.77.0/24")},
		{Iface: "docker0", Prefix: netip.MustParsePrefix("172.17.0.0/16")},
	}
	if c := SubnetClashes(routes, netip.MustParsePrefix("172.30.77.0/24"), "banger0"); len(c) != 0 {
		t.Fatalf("own bridge or default route counted as clash: %v", c)
	}
	c := SubnetClashes(routes, netip.MustParsePrefix("10.77.0.0/24"), "banger0")
	if len(c) != 1 || c[0].Iface != "eth0" {
		t.Fatalf("want the 10/8 route, got %v", c)
	}
	if c := SubnetClashes(routes, netip.MustParsePrefix("172.17.5.0/24"), "banger0"); len(c) != 1 || c[0].Iface != "docker0" {
		t.Fatalf("want docker0, got %v", c)
	}
}

func TestIPv4RoutesParses(t *testing.T) {
	routes, err := IPv4Routes()
	if err != nil {
		t.Skipf("no /proc/net/route: %v", err)
	}
	for _, r := range routes {
		if !r.Prefix.IsValid() || r.Iface == "" {
			t.Fatalf("bad route %+v", r)
		}
	}
}

func TestLeHexIP(t *testing.T) {
	a, err := leHexIP("0100A8C0") // 192.168.0.1 little-endian
	if err != nil || a != netip.MustParseAddr("192.168.0.1") {
		t.Fatalf("got %v %v", a, err)
	}
}

func TestKernelConfigHas(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.gz")
	f, _ := os.Create(p)
	zw := gzip.NewWriter(f)
	zw.Write([]byte("# comment\nCONFIG_NF_TABLES=y\nCONFIG_NF_TABLES_INET=m\n"))
	zw.Close()
	f.Close()
	if !kernelConfigHas(p, "CONFIG_NF_TABLES=y") {
		t.Fatal("missed a line that is there")
	}
	if kernelConfigHas(p, "CONFIG_NF_TABLES_INET=y") || kernelConfigHas(filepath.Join(t.TempDir(), "none.gz"), "CONFIG_NF_TABLES=y") {
		t.Fatal("found a line that is not there")
	}
}
