package image

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pierrec/lz4/v4"
)

// ExtractVmlinux writes the ELF kernel inside a bzImage (vmlinuz) to out.
// Firecracker boots ELF kernels; qemu boots the bzImage itself.
//
// The bzImage setup header (at 0x1f1) gives the number of setup sectors and,
// at 0x248/0x24c, the offset and length of the compressed payload within the
// protected-mode part. The kernel build appends the uncompressed size as 4
// little-endian bytes. Debian's kernels use lz4 (the legacy frame format the
// kernel's own decompressor reads) or gzip; other compressions are reported.
func ExtractVmlinux(vmlinuz, out string) error {
	data, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	payload, size, kind, err := bzImagePayload(data)
	if err != nil {
		return fmt.Errorf("%s: %w", vmlinuz, err)
	}
	var elfData []byte
	switch kind {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return fmt.Errorf("%s: gzip payload: %w", vmlinuz, err)
		}
		zr.Multistream(false)
		elfData, err = io.ReadAll(io.LimitReader(zr, int64(size)+1))
		if err != nil {
			return fmt.Errorf("%s: gzip payload: %w", vmlinuz, err)
		}
	case "lz4":
		elfData, err = lz4Legacy(payload, size)
		if err != nil {
			return fmt.Errorf("%s: lz4 payload: %w", vmlinuz, err)
		}
	default:
		return fmt.Errorf("%s: %s-compressed kernel payload is not supported (gzip and lz4 are)", vmlinuz, kind)
	}
	if len(elfData) != int(size) {
		return fmt.Errorf("%s: payload decompressed to %d bytes, header says %d", vmlinuz, len(elfData), size)
	}
	f, err := elf.NewFile(bytes.NewReader(elfData))
	if err != nil {
		return fmt.Errorf("%s: payload is not an ELF kernel: %w", vmlinuz, err)
	}
	f.Close()
	return writeFileAtomic(out, elfData, 0o644)
}

// IsELF reports whether path is an ELF file.
func IsELF(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry
// point a kernel built with CONFIG_PVH advertises.
const xenElfnotePhys32Entry = 18

// HasPVHEntry reports whether the ELF kernel at path has a PVH entry point
// (a "Xen" note of type XEN_ELFNOTE_PHYS32_ENTRY in a PT_NOTE segment):
// qemu boots such a vmlinux directly, without the bzImage's
// self-decompression, which under TCG costs a few hundred milliseconds.
func HasPVHEntry(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz > 1<<20 {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		if hasNote(data, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return true
		}
	}
	return false
}

// hasNote walks ELF notes (namesz, descsz, type, name, desc; name and desc
// padded to 4 bytes) looking for one of the given name and type.
func hasNote(data []byte, bo binary.ByteOrder, name string, typ uint32) bool {
	align := func(n uint32) uint32 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, t := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		data = data[12:]
		if uint64(align(namesz))+uint64(align(descsz)) > uint64(len(data)) {
			return false
		}
		n := strings.TrimRight(string(data[:namesz]), "\x00")
		if n == name && t == typ {
			return true
		}
		data = data[align(namesz)+align(descsz):]
	}
	return false
}

var payloadMagics = []struct {
	magic []byte
	kind  string
}{
	{[]byte{0x1f, 0x8b}, "gzip"},
	{[]byte{0x02, 0x21, 0x4c, 0x18}, "lz4"},
	{[]byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, "xz"},
	{[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},
	{[]byte{'B', 'Z', 'h'}, "bzip2"},
	{[]byte{0x5d, 0x00, 0x00}, "lzma"},
	{[]byte{0x89, 'L', 'Z', 'O'}, "lzo"},
}

func bzImagePayload(d []byte) (payload []byte, size uint32, kind string, err error) {
	if len(d) < 0x250 || string(d[0x202:0x206]) != "HdrS" {
		return nil, 0, "", errors.New("not a bzImage (no HdrS setup header)")
	}
	setupSects := int(d[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := binary.LittleEndian.Uint32(d[0x248:])
	length := binary.LittleEndian.Uint32(d[0x24c:])
	start := (setupSects+1)*512 + int(off)
	if length < 4 || start < 0 || start+int(length) > len(d) {
		return nil, 0, "", fmt.Errorf("payload [%d,+%d) outside the file", start, length)
	}
	p := d[start : start+int(length)]
	size = binary.LittleEndian.Uint32(p[len(p)-4:])
	kind = "unknown"
	for _, m := range payloadMagics {
		if bytes.HasPrefix(p, m.magic) {
			kind = m.kind
			break
		}
	}
	return p[:len(p)-4], size, kind, nil
}

// lz4Legacy decodes the legacy lz4 frame the kernel uses: a magic, then
// blocks of [4-byte little-endian compressed length][lz4 block], each
// decompressing to at most 8 MiB.
func lz4Legacy(p []byte, size uint32) ([]byte, error) {
	const magic = 0x184C2102
	const maxBlock = 8 << 20
	if len(p) < 4 || binary.LittleEndian.Uint32(p) != magic {
		return nil, errors.New("no legacy lz4 magic")
	}
	p = p[4:]
	out := make([]byte, 0, size)
	buf := make([]byte, maxBlock)
	for len(p) >= 4 && len(out) < int(size) {
		n := binary.LittleEndian.Uint32(p)
		p = p[4:]
		if n == magic { // concatenated stream
			continue
		}
		if int(n) > len(p) {
			return nil, fmt.Errorf("block of %d bytes past the end", n)
		}
		m, err := lz4.UncompressBlock(p[:n], buf)
		if err != nil {
			return nil, err
		}
		out = append(out, buf[:m]...)
		p = p[n:]
	}
	return out, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// KernelVersion reads the release of a kernel file: from the bzImage
// header's kernel_version string, or from the "Linux version" banner of an
// ELF vmlinux. "" when neither is found.
func KernelVersion(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(data) > 0x210 && string(data[0x202:0x206]) == "HdrS" {
		off := int(binary.LittleEndian.Uint16(data[0x20e:])) + 0x200
		if off > 0x200 && off < len(data) {
			end := bytes.IndexByte(data[off:], 0)
			if end > 0 {
				if f := strings.Fields(string(data[off : off+end])); len(f) > 0 {
					return f[0]
				}
			}
		}
	}
	if i := bytes.Index(data, []byte("Linux version ")); i >= 0 {
		rest := data[i+len("Linux version "):]
		if f := strings.Fields(string(rest[:min(len(rest), 128)])); len(f) > 0 {
			return f[0]
		}
	}
	return ""
}
