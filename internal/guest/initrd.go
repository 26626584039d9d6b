package guest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// The mini initrd (REPORT.md, "lean"): a gzip'd newc cpio of about 1 MiB
// holding /bin/busybox (from the image's busybox-static), InitrdModules
// copied flat to /lib/modules/NAME.ko, and /init, which loads them, mounts
// the root= disk and switches to it. No udev and no initramfs-tools scripts:
// about 2 s faster to SSH under TCG than the initramfs-tools initrd.

// InitrdModules are loaded by the mini initrd's /init, in this order
// (dependencies first): virtio-mmio devices from ACPI, the block driver for
// the root disk, the NIC, the ACPI power button with its evdev node, and
// the console driver that carries the guest agent's virtio-serial port.
var InitrdModules = []string{
	"virtio", "virtio_ring", "virtio_mmio", "virtio_blk",
	"failover", "net_failover", "virtio_net",
	"button", "evdev", "virtio_console",
}

// InitrdInit returns the mini initrd's /init script, loading mods in order.
func InitrdInit(mods []string) []byte {
	return bytes.Replace(mustRead("initrd-init"), []byte("@MODULES@"), []byte(strings.Join(mods, " ")), 1)
}

// Module is a kernel module for the mini initrd.
type Module struct {
	// Name is the module's name (virtio_blk); it becomes
	// /lib/modules/NAME.ko.
	Name string
	Data []byte
}

// ErrCompressedModules says the kernel's modules are compressed (.ko.xz,
// .ko.zst, ...), which busybox insmod in the mini initrd cannot load: use the
// image's initramfs-tools initrd instead.
var ErrCompressedModules = fmt.Errorf("kernel modules are compressed")

var moduleNameRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// ModulePaths finds each module of names in modules.dep (the content of
// /lib/modules/KVER/modules.dep) and returns its path relative to that
// directory, in the order of names. Modules listed in modulesBuiltin (the
// content of modules.builtin: built into the kernel) are left out. Names
// match with '-' and '_' alike, as modprobe does.
func ModulePaths(modulesDep, modulesBuiltin []byte, names []string) ([]ModulePath, error) {
	builtin := map[string]bool{}
	for _, l := range strings.Split(string(modulesBuiltin), "\n") {
		if stem, ok := strings.CutSuffix(path.Base(strings.TrimSpace(l)), ".ko"); ok {
			builtin[strings.ReplaceAll(stem, "-", "_")] = true
		}
	}
	want := map[string]string{}
	for _, n := range names {
		if !moduleNameRE.MatchString(n) {
			return nil, fmt.Errorf("module name %q", n)
		}
		want[strings.ReplaceAll(n, "-", "_")] = n
	}
	out := map[string]string{}
	compressed := false
	sc := bufio.NewScanner(bytes.NewReader(modulesDep))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		file, _, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		base := path.Base(file)
		stem, isKO := strings.CutSuffix(base, ".ko")
		if !isKO {
			if i := strings.Index(base, ".ko."); i > 0 {
				stem = base[:i]
				if _, ok := want[strings.ReplaceAll(stem, "-", "_")]; ok {
					compressed = true
				}
			}
			continue
		}
		n, ok := want[strings.ReplaceAll(stem, "-", "_")]
		if !ok {
			continue
		}
		if !filepath.IsLocal(file) {
			return nil, fmt.Errorf("modules.dep: module path %q is not local", file)
		}
		if _, dup := out[n]; !dup {
			out[n] = file
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	var missing []string
	var paths []ModulePath
	for _, n := range names {
		if p, ok := out[n]; ok {
			paths = append(paths, ModulePath{Name: n, Path: p})
		} else if !builtin[strings.ReplaceAll(n, "-", "_")] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		if compressed {
			return nil, fmt.Errorf("%w (%s)", ErrCompressedModules, strings.Join(missing, ", "))
		}
		return nil, fmt.Errorf("modules not in modules.dep: %s", strings.Join(missing, ", "))
	}
	return paths, nil
}

// ModulePath is where a module's file is, relative to /lib/modules/KVER.
type ModulePath struct {
	Name, Path string
}

// WriteInitrd writes the mini initrd to w: a gzip (fastest level, no name or
// time in the header) newc cpio with /bin/busybox, /init (loading modules in
// their order), the device node /dev/console, the empty directories /init
// uses, and each module as /lib/modules/NAME.ko. Every entry is root's and
// dated 0, so the same inputs give the same bytes.
func WriteInitrd(w io.Writer, busybox []byte, modules []Module) error {
	if len(busybox) == 0 {
		return fmt.Errorf("initrd: busybox is empty")
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	cw := &cpioWriter{w: zw}
	dir := func(name string) { cw.entry(name, 0o040755, 0, nil) }
	dir(".")
	dir("bin")
	cw.entry("bin/busybox", 0o100755, 0, busybox)
	dir("dev")
	cw.entry("dev/console", 0o020600, 5<<8|1, nil)
	var names []string
	for _, m := range modules {
		if !moduleNameRE.MatchString(m.Name) || len(m.Data) == 0 {
			return fmt.Errorf("initrd: module %q: bad name or empty", m.Name)
		}
		names = append(names, m.Name)
	}
	cw.entry("init", 0o100755, 0, InitrdInit(names))
	dir("lib")
	dir("lib/modules")
	for _, m := range modules {
		cw.entry("lib/modules/"+m.Name+".ko", 0o100644, 0, m.Data)
	}
	dir("newroot")
	dir("proc")
	cw.entry("TRAILER!!!", 0, 0, nil)
	if cw.err != nil {
		return cw.err
	}
	return zw.Close()
}

// cpioWriter writes the "new ASCII" (070701) cpio format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

// entry writes one entry; rdev is major<<8|minor for device nodes.
func (c *cpioWriter) entry(name string, mode uint32, rdev uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	if name == "TRAILER!!!" {
		c.ino, nlink = 0, 1
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev>>8, rdev&0xff, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
