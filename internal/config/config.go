// Package config loads banger's TOML configuration. Every setting has a
// documented default (Defaults), so an absent file is a valid config, and
// `banger config show` prints the effective values. Unknown keys are an
// error, so a typo never silently does nothing.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the whole configuration. Field comments are the documentation
// shown by `banger config show --comments`... and in docs/config.md.
type Config struct {
	// LogLevel of bangerd and the helper it starts: debug, info, warn, error.
	// BANGER_LOG_LEVEL and bangerd --log-level override it.
	LogLevel string `toml:"log_level" json:"log_level"`
	// VMM: auto, firecracker or qemu. auto picks firecracker where KVM
	// works and the binary exists, else qemu.
	VMM string `toml:"vmm" json:"vmm"`
	// Accel for qemu: auto, kvm or tcg. auto probes KVM for real.
	Accel string `toml:"accel" json:"accel"`
	// DefaultImage is used by `vm create` without --image.
	DefaultImage string `toml:"default_image" json:"default_image"`

	Network NetworkConfig `toml:"network" json:"network"`
	VM      VMConfig      `toml:"vm" json:"vm"`
	Image   ImageConfig   `toml:"image" json:"image"`
	Paths   BinaryConfig  `toml:"binaries" json:"binaries"`
}

// NetworkConfig is the host side of the guests' network.
type NetworkConfig struct {
	// Bridge is the host bridge the TAPs attach to.
	Bridge string `toml:"bridge" json:"bridge"`
	// Subnet is the guests' /24 (or larger); the bridge takes its first
	// address, guests the rest.
	Subnet string `toml:"subnet" json:"subnet"`
	// Domain: a VM named demo answers as demo.<domain> on banger's DNS.
	Domain string `toml:"domain" json:"domain"`
	// TapPoolSize idle TAP devices are kept warm for fast creates.
	TapPoolSize int `toml:"tap_pool_size" json:"tap_pool_size"`
	// NAT gives guests egress through the host.
	NAT bool `toml:"nat" json:"nat"`
}

// VMConfig holds the defaults of `vm create`.
type VMConfig struct {
	VCPUs       int      `toml:"vcpus" json:"vcpus"`
	MemoryMiB   int      `toml:"memory_mib" json:"memory_mib"`
	DiskSize    Size     `toml:"disk_size" json:"disk_size"`
	BootTimeout Duration `toml:"boot_timeout" json:"boot_timeout"`
	StopTimeout Duration `toml:"stop_timeout" json:"stop_timeout"`
	// Warm: a create restores its image's warm template when one matches
	// (and the first create of the default spec makes it); false boots
	// every VM cold.
	Warm bool `toml:"warm" json:"warm"`
	// MountCache is virtiofsd's cache mode for host folders: "auto"
	// (the default: the guest caches for a second), "always" (fastest;
	// changes made on the host show up later) or "none".
	MountCache string `toml:"mount_cache" json:"mount_cache"`
	// MountThreads is virtiofsd's thread pool (0: its default).
	MountThreads int `toml:"mount_threads" json:"mount_threads"`
}

// ImageConfig holds the defaults of `image build`.
type ImageConfig struct {
	// Suite is the Debian release to debootstrap.
	Suite string `toml:"suite" json:"suite"`
	// Mirror is the Debian mirror; empty means the one this host's apt uses.
	Mirror string `toml:"mirror" json:"mirror"`
	// RootfsSize of rootfs.ext4.
	RootfsSize Size `toml:"rootfs_size" json:"rootfs_size"`
	// ExtraPackages are installed on top of banger's base set.
	ExtraPackages []string `toml:"extra_packages" json:"extra_packages"`
}

// BinaryConfig names the external programs banger runs; bare names are
// looked up in PATH.
type BinaryConfig struct {
	Qemu        string `toml:"qemu" json:"qemu"`
	Firecracker string `toml:"firecracker" json:"firecracker"`
	SSH         string `toml:"ssh" json:"ssh"`
}

// Defaults returns the configuration used when no file sets a value.
func Defaults() Config {
	return Config{
		LogLevel:     "info",
		VMM:          "auto",
		Accel:        "auto",
		DefaultImage: "default",
		Network: NetworkConfig{
			Bridge:      "banger0",
			Subnet:      "172.30.77.0/24",
			Domain:      "banger",
			TapPoolSize: 4,
			NAT:         true,
		},
		VM: VMConfig{
			VCPUs:       2,
			MemoryMiB:   1024,
			DiskSize:    4 << 30,
			BootTimeout: Duration(180 * time.Second),
			StopTimeout: Duration(20 * time.Second),
			Warm:        true,
			MountCache:  "auto",
		},
		Image: ImageConfig{
			Suite:         "bookworm",
			RootfsSize:    2 << 30,
			ExtraPackages: []string{},
		},
		Paths: BinaryConfig{
			Qemu:        "qemu-system-x86_64",
			Firecracker: "firecracker",
			SSH:         "ssh",
		},
	}
}

// Load reads path over the defaults. A missing file is not an error.
func Load(path string) (Config, error) {
	cfg := Defaults()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("reading config: %w", err)
	}
	if err := Parse(data, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes TOML data over cfg and validates the result.
func Parse(data []byte, cfg *Config) error {
	md, err := toml.Decode(string(data), cfg)
	if err != nil {
		return err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return fmt.Errorf("unknown setting(s): %s (see `banger config show` for the known ones)", strings.Join(keys, ", "))
	}
	return cfg.Validate()
}

var (
	bridgeName = regexp.MustCompile(`^banger[a-z0-9-]{0,9}$`)
	domainName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
	imageName  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
)

// Validate checks every setting and names the first bad one.
func (c Config) Validate() error {
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	switch c.VMM {
	case "auto", "firecracker", "qemu":
	default:
		return fmt.Errorf("vmm = %q: want auto, firecracker or qemu", c.VMM)
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("accel = %q: want auto, kvm or tcg", c.Accel)
	}
	if !imageName.MatchString(c.DefaultImage) {
		return fmt.Errorf("default_image = %q: want lowercase letters, digits, '.', '_' or '-'", c.DefaultImage)
	}
	if !bridgeName.MatchString(c.Network.Bridge) {
		return fmt.Errorf("network.bridge = %q: must start with \"banger\" and be at most 15 characters of [a-z0-9-]", c.Network.Bridge)
	}
	p, err := netip.ParsePrefix(c.Network.Subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 24 || p.Bits() < 16 || p.Masked() != p {
		return fmt.Errorf("network.subnet = %q: want an IPv4 network between /16 and /24, e.g. 172.30.77.0/24", c.Network.Subnet)
	}
	if !domainName.MatchString(c.Network.Domain) {
		return fmt.Errorf("network.domain = %q: not a valid DNS domain", c.Network.Domain)
	}
	if c.Network.TapPoolSize < 0 || c.Network.TapPoolSize > 64 {
		return fmt.Errorf("network.tap_pool_size = %d: want 0..64", c.Network.TapPoolSize)
	}
	if c.VM.VCPUs < 1 || c.VM.VCPUs > 64 {
		return fmt.Errorf("vm.vcpus = %d: want 1..64", c.VM.VCPUs)
	}
	if c.VM.MemoryMiB < 128 {
		return fmt.Errorf("vm.memory_mib = %d: want at least 128", c.VM.MemoryMiB)
	}
	if c.VM.DiskSize < 64<<20 {
		return fmt.Errorf("vm.disk_size = %s: want at least 64M", c.VM.DiskSize)
	}
	if c.VM.BootTimeout <= 0 || c.VM.StopTimeout <= 0 {
		return fmt.Errorf("vm.boot_timeout and vm.stop_timeout must be positive")
	}
	if c.Image.RootfsSize < 256<<20 {
		return fmt.Errorf("image.rootfs_size = %s: want at least 256M", c.Image.RootfsSize)
	}
	return nil
}

// Subnet returns the parsed guest subnet. Valid after Validate.
func (c Config) Subnet() netip.Prefix { return netip.MustParsePrefix(c.Network.Subnet) }

// Encode renders cfg as TOML, the form `banger config show` prints.
func Encode(cfg Config) ([]byte, error) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func parseLevel(s string) (string, error) {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return s, nil
	}
	return "", fmt.Errorf("log_level = %q: want debug, info, warn or error", s)
}
