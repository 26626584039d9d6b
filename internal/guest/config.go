package guest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Guest contracts: how a VM's secrets reach the guest. An image records the
// contract its banger-init implements (ContractOf, at registration), and
// the daemon provisions each VM to match, so images built by an older
// banger keep working.
const (
	// ContractWorkDisk: the VM's ssh host key is written into its work
	// disk, /root/.banger, with debugfs (banger before the config disk).
	ContractWorkDisk = 1
	// ContractConfigDisk: the host key comes on the config disk, a small
	// read-only third disk (vdc) holding a tar archive (ConfigDisk); the
	// work disk is a plain clone of the image's seed.
	ContractConfigDisk = 2
	// ContractAgent: the image carries banger-agent (docs/agent.md),
	// started by banger-agent.service beside banger-init, answering once
	// banger-init has written InitDone; the host reaches it over a
	// virtio-serial port (qemu) or vsock (Firecracker), and a create is
	// ready when it answers.
	ContractAgent = 3
	// ContractMounts: banger-init mounts the VM's host folders (virtio-fs
	// tags) listed in the config disk's "mounts" file (Share), after the
	// work disk and before the agent answers.
	ContractMounts = 4
	// Contract is what this build's banger-init implements.
	Contract = ContractMounts
)

// contractRE matches banger-init's contract line; its absence means
// ContractWorkDisk.
var contractRE = regexp.MustCompile(`(?m)^# banger-guest-contract: ([0-9]+)$`)

// ContractOf reads the guest contract from the text of an image's
// /usr/local/sbin/banger-init.
func ContractOf(bangerInit []byte) int {
	m := contractRE.FindSubmatch(bangerInit)
	if m == nil {
		return ContractWorkDisk
	}
	n, err := strconv.Atoi(string(m[1]))
	if err != nil || n < ContractWorkDisk {
		return ContractWorkDisk
	}
	return n
}

// ConfigDiskName is the file name of a VM's config disk in its directory.
const ConfigDiskName = "config.tar"

// ConfigDir is the one directory of a config disk's archive; banger-init
// extracts it to /run/banger-config and checks for its contract file before
// trusting the rest.
const ConfigDir = "banger-config"

// ConfigDisk renders a VM's config disk: a tar archive holding ConfigDir
// (0700) with the contract number and the VM's ssh host key pair, padded to
// whole 4 KiB blocks so any VMM takes it as a raw disk. The guest extracts
// it with tar from /dev/vdc. Made in microseconds, it keeps per-VM secrets
// off the work disk (which is then a plain clone of the image's seed) and
// off the kernel command line (which every user of the host can read in
// ps).
// Share is a host folder as the guest sees it: the virtio-fs tag to mount
// at Path. The host validated both (banger-init refuses anything outside
// [A-Za-z0-9._/@+-] too).
type Share struct {
	Tag      string
	Path     string
	ReadOnly bool
}

// sharesFile renders the config disk's "mounts" file: one "TAG PATH ro|rw"
// line a share.
func sharesFile(shares []Share) ([]byte, error) {
	var b bytes.Buffer
	for _, s := range shares {
		if !shareRE.MatchString(s.Tag) || !shareRE.MatchString(s.Path) || s.Path[0] != '/' {
			return nil, fmt.Errorf("config disk: share %q on %q", s.Tag, s.Path)
		}
		mode := "rw"
		if s.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(&b, "%s %s %s\n", s.Tag, s.Path, mode)
	}
	return b.Bytes(), nil
}

var shareRE = regexp.MustCompile(`^[A-Za-z0-9._/@+-]+$`)

func ConfigDisk(hostKey, hostKeyPub []byte, shares []Share) ([]byte, error) {
	if len(hostKey) == 0 || len(hostKeyPub) == 0 {
		return nil, fmt.Errorf("config disk: empty host key")
	}
	mounts, err := sharesFile(shares)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	when := time.Unix(0, 0)
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: ConfigDir + "/", Mode: 0o700, ModTime: when, Format: tar.FormatUSTAR}); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{
		{"contract", 0o644, []byte(strconv.Itoa(Contract) + "\n")},
		{"ssh_host_ed25519_key", 0o600, hostKey},
		{"ssh_host_ed25519_key.pub", 0o644, hostKeyPub},
		{"mounts", 0o644, mounts},
	} {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: ConfigDir + "/" + f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: when, Format: tar.FormatUSTAR}
		if err := w.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := w.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if pad := buf.Len() % 4096; pad != 0 {
		buf.Write(make([]byte, 4096-pad))
	}
	return buf.Bytes(), nil
}
