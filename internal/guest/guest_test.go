package guest

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

func TestKernelCmdline(t *testing.T) {
	s := Settings{
		IP:       netip.MustParsePrefix("10.77.0.2/24"),
		Gateway:  netip.MustParseAddr("10.77.0.1"),
		DNS:      netip.MustParseAddr("10.77.0.1"),
		Hostname: "demo-1",
		TSCKHz:   2596150,
	}
	got, err := KernelCmdline(s)
	want := "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 tsc=reliable 8250.nr_uarts=1 cryptomgr.notests quiet loglevel=3 " +
		"tsc_early_khz=2596150 banger.ip=10.77.0.2/24 banger.gw=10.77.0.1 banger.dns=10.77.0.1 banger.hostname=demo-1"
	if err != nil || got != want {
		t.Errorf("KernelCmdline:\n got %q, %v\nwant %q", got, err, want)
	}

	s.Verbose, s.TSCKHz, s.Console, s.DNS = true, 0, "ttyS1,115200n8", netip.Addr{}
	got, err = KernelCmdline(s)
	want = "console=ttyS1,115200n8 root=/dev/vda rw net.ifnames=0 panic=-1 tsc=reliable 8250.nr_uarts=1 cryptomgr.notests " +
		"banger.ip=10.77.0.2/24 banger.gw=10.77.0.1 banger.hostname=demo-1"
	if err != nil || got != want {
		t.Errorf("KernelCmdline verbose:\n got %q, %v\nwant %q", got, err, want)
	}

	got, err = KernelCmdline(Settings{})
	if err != nil || got != "console=ttyS0 "+BaseCmdline+" quiet loglevel=3" {
		t.Errorf("KernelCmdline(zero) = %q, %v", got, err)
	}

	v6, err := KernelCmdline(Settings{IP: netip.MustParsePrefix("fd00::2/64"), Gateway: netip.MustParseAddr("fd00::1")})
	if err != nil || !strings.HasSuffix(v6, " banger.ip=fd00::2/64 banger.gw=fd00::1") {
		t.Errorf("v6: %q, %v", v6, err)
	}
}

// Nothing in Settings can add a kernel parameter of its own.
func TestKernelCmdlineRefusesInjection(t *testing.T) {
	ok := Settings{IP: netip.MustParsePrefix("10.77.0.2/24"), Gateway: netip.MustParseAddr("10.77.0.1"), Hostname: "vm"}
	for name, mod := range map[string]func(*Settings){
		"hostname space":     func(s *Settings) { s.Hostname = "vm init=/bin/sh" },
		"hostname param":     func(s *Settings) { s.Hostname = "vm banger.ip=1.2.3.4/8" },
		"hostname newline":   func(s *Settings) { s.Hostname = "vm\ninit=/bin/sh" },
		"hostname tab":       func(s *Settings) { s.Hostname = "vm\tx" },
		"hostname equals":    func(s *Settings) { s.Hostname = "a=b" },
		"hostname dot":       func(s *Settings) { s.Hostname = "a.b" },
		"hostname quote":     func(s *Settings) { s.Hostname = `a"b` },
		"hostname subst":     func(s *Settings) { s.Hostname = "$(reboot)" },
		"hostname leading -": func(s *Settings) { s.Hostname = "-vm" },
		"hostname trailing":  func(s *Settings) { s.Hostname = "vm-" },
		"hostname long":      func(s *Settings) { s.Hostname = strings.Repeat("a", 64) },
		"hostname utf8":      func(s *Settings) { s.Hostname = "vmé" },
		"hostname nul":       func(s *Settings) { s.Hostname = "vm\x00" },
		"console space":      func(s *Settings) { s.Console = "ttyS0 init=/bin/sh" },
		"console path":       func(s *Settings) { s.Console = "/dev/ttyS0" },
		"console newline":    func(s *Settings) { s.Console = "ttyS0\n" },
		"gateway no ip":      func(s *Settings) { s.IP = netip.Prefix{} },
		"gateway family":     func(s *Settings) { s.Gateway = netip.MustParseAddr("fd00::1") },
		"gateway is guest":   func(s *Settings) { s.Gateway = netip.MustParseAddr("10.77.0.2") },
		"ip zone":            func(s *Settings) { s.IP = netip.PrefixFrom(netip.MustParseAddr("fe80::1%eth0"), 64) },
		"ip unspecified":     func(s *Settings) { s.IP = netip.MustParsePrefix("0.0.0.0/0"); s.Gateway = netip.Addr{} },
		"ip multicast":       func(s *Settings) { s.IP = netip.MustParsePrefix("224.0.0.1/4"); s.Gateway = netip.Addr{} },
		"dns zone":           func(s *Settings) { s.DNS = netip.MustParseAddr("fe80::1%eth0") },
		"tsc small":          func(s *Settings) { s.TSCKHz = 5 },
	} {
		s := ok
		mod(&s)
		if got, err := KernelCmdline(s); err == nil {
			t.Errorf("%s: accepted: %q", name, got)
		}
	}
	if _, err := KernelCmdline(ok); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"a", "A1", "vm-1", strings.Repeat("a", 63), "0"} {
		if err := ValidateHostname(h); err != nil {
			t.Errorf("%q refused: %v", h, err)
		}
	}
}

// Every embedded script parses as POSIX sh.
func TestScriptsParse(t *testing.T) {
	sh := "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		t.Skip("no /bin/sh")
	}
	emb := Embedded()
	scripts := map[string][]byte{"initrd-init (rendered)": InitrdInit(InitrdModules)}
	for _, name := range Scripts {
		scripts[name] = emb[name]
	}
	for _, f := range Files() {
		if bytes.HasPrefix(f.Content, []byte("#!/bin/sh")) {
			scripts[f.Path] = f.Content
			if f.Mode.Perm()&0o111 == 0 {
				t.Errorf("%s is a script but mode %v", f.Path, f.Mode)
			}
		}
	}
	if len(scripts) < 5 {
		t.Fatalf("only %d scripts found", len(scripts))
	}
	for name, body := range scripts {
		if len(body) == 0 || !bytes.HasPrefix(body, []byte("#!/bin/")) {
			t.Errorf("%s: no shebang", name)
			continue
		}
		cmd := exec.Command(sh, "-n")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", name, err, out)
		}
	}
	if bytes.Contains(InitrdInit(InitrdModules), []byte("@MODULES@")) {
		t.Error("initrd init keeps its placeholder")
	}
}

func TestFiles(t *testing.T) {
	files := Files()
	seen := map[string]bool{}
	for _, f := range files {
		if err := CheckPath(f.Path); err != nil {
			t.Errorf("%v", err)
		}
		if seen[f.Path] {
			t.Errorf("%s listed twice", f.Path)
		}
		seen[f.Path] = true
		switch {
		case f.IsSymlink():
			if !path.IsAbs(f.Target) || path.Clean(f.Target) != f.Target || f.Content != nil {
				t.Errorf("symlink %s -> %q", f.Path, f.Target)
			}
		case f.IsDir():
			if f.Content != nil || f.Target != "" {
				t.Errorf("dir %s has content", f.Path)
			}
		default:
			if !f.Mode.IsRegular() || f.Content == nil || f.Target != "" {
				t.Errorf("file %s: mode %v", f.Path, f.Mode)
			}
			if f.Mode.Perm()&0o022 != 0 {
				t.Errorf("%s is group/world writable", f.Path)
			}
		}
	}
	// A directory listed must come before what it holds.
	for i, f := range files {
		for _, g := range files[:i] {
			if strings.HasPrefix(g.Path, f.Path+"/") && f.IsDir() {
				t.Errorf("%s listed after %s, which it holds", f.Path, g.Path)
			}
		}
	}
	for _, u := range MaskedUnits {
		if !seen["/etc/systemd/system/"+u] {
			t.Errorf("mask of %s missing", u)
		}
	}
	for _, e := range EnabledUnits {
		l := "/etc/systemd/system/" + e.WantedBy + ".wants/" + e.Unit
		if !seen[l] || !seen["/etc/systemd/system/"+e.Unit] {
			t.Errorf("%s not enabled", e.Unit)
		}
	}
	for _, want := range []string{"/usr/local/sbin/banger-init", "/etc/fstab", "/etc/ssh/sshd_config.d/banger.conf", "/root/.ssh"} {
		if !seen[want] {
			t.Errorf("%s missing", want)
		}
	}
	if slices.Contains(MaskedUnits, "ssh.service") || slices.Contains(MaskedUnits, "banger-init.service") {
		t.Error("masking what banger needs")
	}
	var fstab []byte
	for _, f := range files {
		if f.Path == "/etc/fstab" {
			fstab = f.Content
		}
	}
	if !bytes.Contains(fstab, []byte("/dev/vdb\t/root\text4\tdefaults,noatime,noauto\t0\t0\n")) {
		t.Errorf("fstab lacks the work disk:\n%s", fstab)
	}
}

func TestAptSources(t *testing.T) {
	got := string(AptSources("bookworm", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"))
	want := "deb http://deb.debian.org/debian bookworm main\n" +
		"deb http://deb.debian.org/debian bookworm-updates main\n" +
		"deb http://deb.debian.org/debian-security bookworm-security main\n"
	if got != want {
		t.Errorf("got %q", got)
	}
	if got := string(AptSources("sid", "http://m/debian", "http://s/ds")); got != "deb http://m/debian sid main\n" {
		t.Errorf("sid: %q", got)
	}
	if got := string(AptSources("trixie", "http://m/debian", "")); strings.Contains(got, "security") {
		t.Errorf("no security mirror: %q", got)
	}
}

func TestParseTSCKHz(t *testing.T) {
	dmesg := []byte("[    0.000000] tsc: Fast TSC calibration using PIT\n[    0.000000] tsc: Detected 2596.150 MHz processor\n")
	if k, ok := ParseTSCKHz(dmesg, nil); !ok || k != 2596150 {
		t.Errorf("dmesg: %d %v", k, ok)
	}
	cpu := []byte("processor\t: 0\ncpu MHz\t\t: 2596.1\ncache size\t: 512 KB\n")
	if k, ok := ParseTSCKHz(nil, cpu); !ok || k != 2596100 {
		t.Errorf("cpuinfo: %d %v", k, ok)
	}
	if k, ok := ParseTSCKHz(nil, []byte("cpu MHz : 3000\n")); !ok || k != 3000000 {
		t.Errorf("integer MHz: %d %v", k, ok)
	}
	if _, ok := ParseTSCKHz([]byte("nothing"), []byte("nothing")); ok {
		t.Error("found a frequency in nothing")
	}
}

const modulesDep = `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/acpi/button.ko:
kernel/drivers/input/evdev.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/fuse/fuse.ko:
`

func TestModulePaths(t *testing.T) {
	got, err := ModulePaths([]byte(modulesDep), nil, InitrdModules)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(InitrdModules) || got[3] != (ModulePath{"virtio_blk", "kernel/drivers/block/virtio_blk.ko"}) {
		t.Errorf("got %v", got)
	}
	// Built-in modules are left out.
	got, err = ModulePaths([]byte(strings.Replace(modulesDep, "kernel/drivers/input/evdev.ko:\n", "", 1)), []byte("kernel/drivers/input/evdev.ko\n"), InitrdModules)
	if err != nil || len(got) != len(InitrdModules)-1 {
		t.Errorf("builtin: %v, %v", got, err)
	}
	// Missing, and compressed.
	if _, err := ModulePaths([]byte("kernel/fs/fuse/fuse.ko:\n"), nil, InitrdModules); err == nil || !strings.Contains(err.Error(), "virtio_blk") {
		t.Errorf("missing: %v", err)
	}
	xz := strings.ReplaceAll(modulesDep, ".ko", ".ko.xz")
	if _, err := ModulePaths([]byte(xz), nil, InitrdModules); err == nil || !strings.Contains(err.Error(), ErrCompressedModules.Error()) {
		t.Errorf("compressed: %v", err)
	}
	if _, err := ModulePaths([]byte("../../etc/virtio.ko:\n"), nil, []string{"virtio"}); err == nil {
		t.Error("a path out of the modules dir was accepted")
	}
}

func TestWriteInitrd(t *testing.T) {
	mods := []Module{{"virtio", []byte("v")}, {"virtio_blk", []byte("blk module")}}
	var a, b bytes.Buffer
	if err := WriteInitrd(&a, []byte("\x7fELF busybox"), mods); err != nil {
		t.Fatal(err)
	}
	if err := WriteInitrd(&b, []byte("\x7fELF busybox"), mods); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("initrd is not reproducible")
	}
	zr, err := gzip.NewReader(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("070701")) || !bytes.Contains(raw, []byte("TRAILER!!!\x00")) || len(raw)%4 != 0 {
		t.Errorf("not a newc archive: %q...", raw[:min(len(raw), 120)])
	}
	if !bytes.Contains(raw, []byte(`MODS="virtio virtio_blk"`)) {
		t.Error("init does not load the modules given")
	}
	if err := WriteInitrd(io.Discard, []byte("bb"), []Module{{"../x", []byte("x")}}); err == nil {
		t.Error("module name with a path accepted")
	}
	// The host's cpio reads it as the kernel would: every entry, root's.
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Log("cpio not in PATH; archive listing not checked")
		return
	}
	cmd := exec.Command(cpio, "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	listing := string(out)
	for _, want := range []string{
		"-rwxr-xr-x   1 root     root           12 Jan  1  1970 bin/busybox",
		"crw-------   1 root     root       5,   1 Jan  1  1970 dev/console",
		"-rwxr-xr-x   1 root     root",
		"lib/modules/virtio_blk.ko", "newroot", "proc", " init\n",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}
}

func TestStockVariantFiles(t *testing.T) {
	lean, stock := Files(), FilesFor(VariantStock)
	byPath := map[string]File{}
	for _, f := range stock {
		byPath[f.Path] = f
	}
	for _, u := range MaskedUnits {
		if _, ok := byPath["/etc/systemd/system/"+u]; ok {
			t.Errorf("stock masks %s", u)
		}
	}
	for p := range byPath {
		if strings.HasPrefix(p, "/etc/systemd/system-generators") || strings.HasPrefix(p, "/etc/systemd/system/ssh.service.d") {
			t.Errorf("stock has the lean image's %s", p)
		}
	}
	// fstab mounts /root in stock: banger-init must run after it.
	if f := byPath["/etc/systemd/system/banger-init.service.d/stock.conf"]; !strings.Contains(string(f.Content), "After=local-fs.target") {
		t.Errorf("stock's banger-init drop-in: %q", f.Content)
	}
	leanPaths := map[string]File{}
	for _, f := range lean {
		leanPaths[f.Path] = f
	}
	for _, g := range MaskedGenerators {
		if f, ok := leanPaths["/etc/systemd/system-generators/"+g]; !ok || !f.IsSymlink() || f.Target != "/dev/null" {
			t.Errorf("lean does not mask the generator %s: %+v", g, f)
		}
	}
	if slices.Contains(MaskedGenerators, "systemd-fstab-generator") {
		t.Error("the fstab generator is masked: users' fstab entries would not mount")
	}
	if f := leanPaths["/etc/systemd/system/ssh.service.d/banger.conf"]; !strings.Contains(string(f.Content), "\nExecStartPre=\n") {
		t.Errorf("lean ssh drop-in: %q", f.Content)
	}
	if f := byPath["/etc/fstab"]; !strings.Contains(string(f.Content), "/dev/vdb\t/root\text4\tdefaults,noatime\t0\t2") {
		t.Errorf("stock fstab: %q", f.Content)
	}
	for _, must := range []string{"/usr/local/sbin/banger-init", "/etc/systemd/system/sysinit.target.wants/banger-init.service", "/etc/ssh/sshd_config.d/banger.conf"} {
		if _, ok := byPath[must]; !ok {
			t.Errorf("stock lacks %s", must)
		}
	}
	if len(stock) >= len(lean) {
		t.Errorf("stock has %d entries, lean %d: nothing left out", len(stock), len(lean))
	}
	if !slices.Contains(RemoveFor(VariantLean), "/etc/update-motd.d") || slices.Contains(RemoveFor(VariantStock), "/etc/update-motd.d") {
		t.Errorf("update-motd.d removal: lean %v, stock %v", RemoveFor(VariantLean), RemoveFor(VariantStock))
	}
	if !slices.Equal(RemoveFor(VariantStock), RemovePatterns) || len(RemoveFor(VariantLean)) != len(RemovePatterns)+len(LeanRemovePatterns) {
		t.Error("RemoveFor must add to RemovePatterns, not replace or alter it")
	}
	if !ValidVariant("") || !ValidVariant("stock") || ValidVariant("fat") {
		t.Error("ValidVariant")
	}
}
