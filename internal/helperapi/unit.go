package helperapi

import (
	"path/filepath"
	"strings"
	"unicode"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// UnitOptions are the install-specific parts of banger-helper.service.
// Nothing in it depends on the users: who may do what is in the grants
// file, which the helper reads at start.
type UnitOptions struct {
	// BinaryPath is the helper binary.
	BinaryPath string
	// Socket is the helper's socket; its directory should be /run/banger,
	// the unit's RuntimeDirectory.
	Socket string
	// GrantsFile is root's grants (DefaultGrantsFile).
	GrantsFile string
	// StateFile records the owners of what the helper made; its directory
	// should be /var/lib/banger-helper, the unit's StateDirectory.
	StateFile string
	// LogFile is the helper's JSON log; its directory should be
	// /var/log/banger, the unit's LogsDirectory.
	LogFile string
	// LogLevel is debug, info, warn or error.
	LogLevel string
}

// Fixed install locations.
const (
	DefaultBinaryPath = "/usr/local/libexec/banger/banger-helper"
	// DefaultSocket is paths.HelperSocket, where bangerd looks for the
	// helper: one path, named in one place.
	DefaultSocket    = paths.HelperSocket
	DefaultLogFile   = "/var/log/banger/helper.log"
	DefaultStateFile = "/var/lib/banger-helper/state.json"
)

// DefaultUnitOptions renders dist/systemd/banger-helper.service.
func DefaultUnitOptions() UnitOptions {
	return UnitOptions{
		BinaryPath: DefaultBinaryPath,
		Socket:     DefaultSocket,
		GrantsFile: DefaultGrantsFile,
		StateFile:  DefaultStateFile,
		LogFile:    DefaultLogFile,
		LogLevel:   "info",
	}
}

// Validate checks the options before rendering.
func (o UnitOptions) Validate() error {
	for _, p := range []struct{ arg, v string }{
		{"binary", o.BinaryPath}, {"socket", o.Socket}, {"grants", o.GrantsFile},
		{"state-file", o.StateFile}, {"log", o.LogFile},
	} {
		if err := validatePath(p.arg, p.v); err != nil {
			return err
		}
	}
	switch o.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return rpc.BadArg("log-level", o.LogLevel, "want debug, info, warn or error")
	}
	return nil
}

// validatePath accepts an absolute, clean path of printable characters
// without spaces: what a unit file carries unquoted.
func validatePath(arg, p string) error {
	if p == "" || p[0] != '/' || filepath.Clean(p) != p || p == "/" || len(p) > 4095 {
		return rpc.BadArg(arg, p, "want an absolute, clean path")
	}
	for _, r := range p {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(`"'\$%;`, r) {
			return rpc.BadArg(arg, p, "characters a unit file would have to quote")
		}
	}
	return nil
}

// UnitArgs is the helper's command line for o.
func UnitArgs(o UnitOptions) []string {
	return []string{
		"--socket", o.Socket, "--socket-mode", "0666",
		"--grants", o.GrantsFile, "--state-file", o.StateFile,
		"--log", o.LogFile, "--log-level", o.LogLevel,
	}
}

// UnitFile renders banger-helper.service for o (validate o first).
func UnitFile(o UnitOptions) string {
	args := UnitArgs(o)
	var exec strings.Builder
	exec.WriteString(o.BinaryPath)
	for i := 0; i < len(args); i += 2 {
		exec.WriteString(" \\\n    " + args[i] + " " + args[i+1])
	}
	return `# banger-helper.service: banger's root helper (docs/helper.md).
# Written by ` + "`banger system install`" + ` (helperapi.UnitFile); who may use the
# helper, and for which bridge and subnet, is in ` + o.GrantsFile + `.

[Unit]
Description=banger root helper (bridges, TAPs and NAT for bangerd)
Documentation=https://github.com/banger-dev/banger/blob/main/docs/helper.md

[Service]
Type=simple
ExecStart=` + exec.String() + `
Restart=on-failure
RestartSec=1s
UMask=0077

# The socket lives in /run/banger (0755); the socket is 0666 because the
# helper admits callers by their peer credentials and the grants, not by
# file mode. Kept across restarts so a restart does not pull the directory
# from under a running bangerd.
RuntimeDirectory=banger
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
LogsDirectory=banger
LogsDirectoryMode=0750
# The owners of what the helper made (root only).
StateDirectory=banger-helper
StateDirectoryMode=0700

# What the helper does needs CAP_NET_ADMIN (netlink, nftables, TUNSETIFF on
# a user's TAP) and CAP_NET_BIND_SERVICE (port 53 for a user's DNS). It
# runs no program, writes no file but its socket, log and state, and opens
# no device but /dev/net/tun.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
# No IPAddressDeny=: the port 53 sockets the helper binds are used by
# bangerd, and a socket's traffic is filtered by the cgroup that made it.
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
BindPaths=/dev/net/tun
DeviceAllow=/dev/net/tun rw
# /proc/sys is read-only but for /proc/sys/net: forwarding of banger's bridges
# and of the uplinks (one interface each; never net.ipv4.ip_forward,
# conf/all or conf/default) and the IPv6 settings of banger's bridges and TAPs.
ProtectKernelTunables=yes
ReadWritePaths=/proc/sys/net
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
PrivateMounts=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
PrivateIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`
}
