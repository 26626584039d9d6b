package image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// fakeELF is a minimal valid ELF64 header (no sections), enough for
// debug/elf to accept it.
func fakeELF(size int) []byte {
	b := make([]byte, size)
	copy(b, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	binary.LittleEndian.PutUint16(b[16:], 2)    // ET_EXEC
	binary.LittleEndian.PutUint16(b[18:], 0x3e) // x86-64
	binary.LittleEndian.PutUint32(b[20:], 1)
	binary.LittleEndian.PutUint16(b[52:], 64) // ehsize
	for i := 64; i < size; i++ {
		b[i] = byte(i * 7)
	}
	return b
}

// bzImage wraps payload the way the kernel build does.
func bzImage(payload []byte, size int) []byte {
	const setupSects = 4
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	off := 0x40
	body := make([]byte, off)
	p := append(append([]byte(nil), payload...), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(p[len(p)-4:], uint32(size))
	body = append(body, p...)
	binary.LittleEndian.PutUint32(img[0x248:], uint32(off))
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(p)))
	return append(img, body...)
}

func TestExtractVmlinuxGzipAndLz4(t *testing.T) {
	elfData := fakeELF(3 << 20)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elfData)
	zw.Close()

	// Legacy lz4: magic, then [len][block] per 8 MiB chunk.
	lzp := binary.LittleEndian.AppendUint32(nil, 0x184C2102)
	blk := make([]byte, lz4.CompressBlockBound(len(elfData)))
	n, err := lz4.CompressBlock(elfData, blk, nil)
	if err != nil || n == 0 {
		t.Fatalf("compress: %v", err)
	}
	lzp = binary.LittleEndian.AppendUint32(lzp, uint32(n))
	lzp = append(lzp, blk[:n]...)

	for name, payload := range map[string][]byte{"gzip": gz.Bytes(), "lz4": lzp} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, "vmlinuz")
			os.WriteFile(in, bzImage(payload, len(elfData)), 0o644)
			out := filepath.Join(dir, "vmlinux")
			if err := ExtractVmlinux(in, out); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, elfData) || !IsELF(out) {
				t.Fatal("extracted kernel differs or is not ELF")
			}
		})
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "notakernel")
	os.WriteFile(bad, bytes.Repeat([]byte{1}, 4096), 0o644)
	if err := ExtractVmlinux(bad, filepath.Join(dir, "out")); err == nil {
		t.Fatal("accepted a file without a setup header")
	}
	zst := filepath.Join(dir, "zstd")
	os.WriteFile(zst, bzImage([]byte{0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3}, 100), 0o644)
	if err := ExtractVmlinux(zst, filepath.Join(dir, "out")); err == nil || !bytes.Contains([]byte(err.Error()), []byte("zstd")) {
		t.Fatalf("zstd payload: %v", err)
	}
}

// TestExtractRealKernel runs on a real Debian kernel when one is given.
func TestExtractRealKernel(t *testing.T) {
	k := os.Getenv("BANGER_TEST_KERNEL")
	if k == "" {
		t.Skip("BANGER_TEST_KERNEL not set (make test-e2e sets it to the cached test image's kernel)")
	}
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVmlinux(k, out); err != nil {
		t.Fatal(err)
	}
	if !IsELF(out) {
		t.Fatal("not ELF")
	}
	// Debian's kernels are built with CONFIG_PVH: qemu boots them directly.
	if !HasPVHEntry(out) {
		t.Error("the extracted kernel has no PVH entry note")
	}
	v1, v2 := KernelVersion(k), KernelVersion(out)
	if v1 == "" || v1 != v2 {
		t.Fatalf("kernel version from bzImage %q, from vmlinux %q", v1, v2)
	}
}

func TestKernelVersionFromHeader(t *testing.T) {
	img := bzImage([]byte{0x1f, 0x8b}, 10)
	// kernel_version points (after +0x200) at a string in the setup code.
	binary.LittleEndian.PutUint16(img[0x20e:], 0x300)
	copy(img[0x500:], "6.1.0-50-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\x00")
	p := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(p, img, 0o644)
	if v := KernelVersion(p); v != "6.1.0-50-cloud-amd64" {
		t.Fatalf("version %q", v)
	}
}

// noteELF is an ELF64 file whose one program header is a PT_NOTE segment
// holding notes.
func noteELF(notes []byte) []byte {
	b := fakeELF(64 + 56)
	le := binary.LittleEndian
	le.PutUint64(b[32:], 64) // phoff
	le.PutUint16(b[54:], 56) // phentsize
	le.PutUint16(b[56:], 1)  // phnum
	ph := b[64:]
	le.PutUint32(ph[0:], 4)                   // PT_NOTE
	le.PutUint64(ph[8:], 64+56)               // offset
	le.PutUint64(ph[32:], uint64(len(notes))) // filesz
	le.PutUint64(ph[40:], uint64(len(notes))) // memsz
	return append(b, notes...)
}

func note(name string, typ uint32, desc []byte) []byte {
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	n := append([]byte(name), 0)
	h := make([]byte, 12)
	binary.LittleEndian.PutUint32(h, uint32(len(n)))
	binary.LittleEndian.PutUint32(h[4:], uint32(len(desc)))
	binary.LittleEndian.PutUint32(h[8:], typ)
	return append(append(h, pad(n)...), pad(desc)...)
}

func TestHasPVHEntry(t *testing.T) {
	entry := []byte{0x50, 0x08, 0x00, 0x01, 0, 0, 0, 0}
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		data []byte
		want bool
	}{
		"pvh after other notes": {noteELF(append(append(note("GNU", 3, []byte("build-id")), note("Xen", 6, []byte("linux\x00"))...), note("Xen", 18, entry)...)), true},
		"xen notes, no pvh":     {noteELF(note("Xen", 6, []byte("linux\x00"))), false},
		"pvh type, other owner": {noteELF(note("GNU", 18, entry)), false},
		"truncated note":        {noteELF(note("Xen", 18, entry)[:14]), false},
		"no notes":              {fakeELF(128), false},
		"not elf":               {[]byte("MZ not an elf at all"), false},
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, tc.data, 0o644); err != nil {
			t.Fatal(err)
		}
		if got := HasPVHEntry(p); got != tc.want {
			t.Errorf("%s: HasPVHEntry = %v, want %v", name, got, tc.want)
		}
	}
	if HasPVHEntry(filepath.Join(dir, "missing")) {
		t.Error("a missing file has a PVH entry")
	}
}
