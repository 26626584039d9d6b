package helperapi

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// UnitOptions are the install-specific parts of banger-helper.service.
type UnitOptions struct {
	// BinaryPath is the helper binary.
	BinaryPath string
	// Socket is the helper's socket; its directory should be /run/banger,
	// the unit's RuntimeDirectory.
	Socket string
	// SocketMode is the socket file's mode.
	SocketMode os.FileMode
	// SocketGID owns the socket file; -1 leaves it root's.
	SocketGID int
	// AllowUIDs may call the helper besides root (the users running bangerd).
	AllowUIDs []uint32
	// StateDirs are the state roots, each also made writable in the unit.
	StateDirs []string
	// BuildDir is the helper's root-only scratch directory for image
	// builds. Under /var/lib/banger-helper (the unit's StateDirectory) it
	// needs nothing more; elsewhere it is made writable with ReadWritePaths
	// and must exist before the helper starts.
	BuildDir string
	// LogFile is the helper's JSON log; its directory should be
	// /var/log/banger, the unit's LogsDirectory.
	LogFile string
	// LogLevel is debug, info, warn or error.
	LogLevel string
}

// Fixed install locations.
const (
	// helperStateDirectory is the unit's StateDirectory, root's 0700.
	helperStateDirectory = "/var/lib/banger-helper"

	DefaultBinaryPath = "/usr/local/libexec/banger/banger-helper"
	DefaultSocket     = "/run/banger/helper.sock"
	DefaultLogFile    = "/var/log/banger/helper.log"
	DefaultStateDir   = "/var/lib/banger"
	// DefaultBuildDir is the helper's scratch directory for image builds,
	// inside the unit's StateDirectory (/var/lib/banger-helper, 0700).
	DefaultBuildDir = "/var/lib/banger-helper/builds"
)

// DefaultUnitOptions renders dist/systemd/banger-helper.service: root only,
// root's state directory.
func DefaultUnitOptions() UnitOptions {
	return UnitOptions{
		BinaryPath: DefaultBinaryPath,
		Socket:     DefaultSocket,
		SocketMode: 0o660,
		SocketGID:  -1,
		StateDirs:  []string{DefaultStateDir},
		BuildDir:   DefaultBuildDir,
		LogFile:    DefaultLogFile,
		LogLevel:   "info",
	}
}

// Validate checks the options before rendering.
func (o UnitOptions) Validate() error {
	for _, p := range []struct{ arg, v string }{{"binary", o.BinaryPath}, {"socket", o.Socket}, {"log", o.LogFile}, {"build-dir", o.BuildDir}} {
		if err := ValidatePath(p.arg, p.v); err != nil {
			return err
		}
	}
	for _, d := range o.StateDirs {
		if err := ValidatePath("state-dir", d); err != nil {
			return err
		}
	}
	if len(o.StateDirs) == 0 {
		return badArg("state-dir", "", "at least one state directory is needed")
	}
	for _, u := range o.AllowUIDs {
		if err := ValidateID("allow-uid", u); err != nil {
			return err
		}
	}
	if o.SocketGID < -1 {
		return badArg("socket-group", strconv.Itoa(o.SocketGID), "want a gid or -1")
	}
	if o.SocketMode&^0o777 != 0 {
		return badArg("socket-mode", fmt.Sprintf("%o", uint32(o.SocketMode)), "want permission bits only")
	}
	switch o.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return badArg("log-level", o.LogLevel, "want debug, info, warn or error")
	}
	return nil
}

// UnitFile renders banger-helper.service for o (validate o first: an
// invalid option renders as given). Arguments are quoted for systemd, and
// '%' and '$' escaped, so a path with spaces stays one argument.
func UnitFile(o UnitOptions) string {
	args := []string{sdQuote(o.BinaryPath),
		"--socket " + sdQuote(o.Socket),
		fmt.Sprintf("--socket-mode %04o", uint32(o.SocketMode.Perm())),
	}
	if o.SocketGID >= 0 {
		args = append(args, "--socket-group "+strconv.Itoa(o.SocketGID))
	}
	for _, u := range o.AllowUIDs {
		args = append(args, "--allow-uid "+strconv.FormatUint(uint64(u), 10))
	}
	for _, d := range o.StateDirs {
		args = append(args, "--state-dir "+sdQuote(d))
	}
	args = append(args, "--build-dir "+sdQuote(o.BuildDir), "--log "+sdQuote(o.LogFile), "--log-level "+o.LogLevel)

	var rw strings.Builder
	for _, d := range o.StateDirs {
		rw.WriteString("ReadWritePaths=" + sdQuote("-"+d) + "\n")
	}
	if !strings.HasPrefix(o.BuildDir, helperStateDirectory+"/") {
		rw.WriteString("ReadWritePaths=" + sdQuote(o.BuildDir) + "\n")
	}

	return `# banger-helper.service: banger's root helper (docs/helper.md).
# Rendered by ` + "`banger system install`" + ` (helperapi.UnitFile), which fills in
# --allow-uid, --socket-group, --state-dir and ReadWritePaths for the users it
# installs for; this copy is the default rendering (root only).

[Unit]
Description=banger root helper (bridges, TAPs, NAT, loop and device-mapper for bangerd)
Documentation=https://github.com/banger-dev/banger/blob/main/docs/helper.md

[Service]
Type=simple
ExecStart=` + strings.Join(args, " \\\n    ") + `
Restart=on-failure
RestartSec=1s
UMask=0077

# The socket lives in /run/banger (0755 so bangerd can reach the socket,
# which is itself 0660 and group-limited). Kept across restarts so a helper
# restart does not pull the directory from under a running bangerd.
RuntimeDirectory=banger
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
LogsDirectory=banger
LogsDirectoryMode=0750
# Image builds happen in /var/lib/banger-helper/builds (--build-dir), which
# only root can reach; no build survives a helper restart.
StateDirectory=banger-helper
StateDirectoryMode=0700

# Hardening that still allows netlink, nftables, loop and device-mapper, and
# image builds (debootstrap, dpkg and chroot need CAP_SYS_CHROOT, CAP_SETUID,
# CAP_SETGID, CAP_FSETID and CAP_SETFCAP for what packages install).
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_MKNOD CAP_SYS_CHROOT CAP_SETUID CAP_SETGID CAP_FSETID CAP_SETFCAP
# AF_INET/AF_INET6 also let debootstrap reach the Debian mirror.
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
# The whole file system is read-only to the helper except /dev, /proc, /sys,
# its runtime, log and build directories and the state roots below (the
# copy-on-write files it attaches read-write live there, and built images
# are written there).
ProtectSystem=strict
# Not ProtectHome=yes or tmpfs: the state roots of users are under their
# home (~/.local/state/banger) and must stay visible to attach loop devices.
# ProtectSystem=strict already keeps /home read-only outside the state roots.
# A state root made after the helper started is read-only to it until it is
# restarted: create the state directory before starting the helper.
ProtectHome=no
` + rw.String() + `PrivateTmp=yes
# Not PrivateDevices: the helper needs /dev/loop-control, /dev/loop*,
# /dev/mapper/control, the dm-N nodes dmsetup makes, and /dev/net/tun.
PrivateDevices=no
# Not ProtectKernelTunables: nat.ensure writes /proc/sys/net/ipv4/ip_forward.
ProtectKernelTunables=no
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# Image build steps run in new mount and PID namespaces (so they leave no
# mount and no process behind); no other kind may be made.
RestrictNamespaces=mnt pid
RestrictRealtime=yes
# Not RestrictSUIDSGID: dpkg must install setuid and setgid programs (su,
# passwd, mount) into the image trees.
RestrictSUIDSGID=no
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
`
}

// sdQuote quotes one word for a systemd unit: bare when it needs nothing,
// else in double quotes with \ and " escaped; % and $ are doubled so that
// systemd expands neither specifiers nor variables in it.
func sdQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	s = strings.ReplaceAll(s, "$", "$$")
	plain := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@,=%$", r)) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}
