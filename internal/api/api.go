// Package api holds the method names and the param and result types of
// bangerd's RPC surface, shared by the daemon (server) and the CLI (client).
package api

import (
	"time"

	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/paths"
)

// Daemon methods.
const (
	MethodDaemonStatus = "daemon.status"
	MethodDaemonStop   = "daemon.stop"
	MethodDaemonPing   = "daemon.ping"
)

// DaemonStatus is the result of daemon.status.
type DaemonStatus struct {
	PID           int          `json:"pid"`
	UID           int          `json:"uid"`
	Version       string       `json:"version"`
	StartedAt     time.Time    `json:"started_at"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Socket        string       `json:"socket"`
	LogPath       string       `json:"log_path"`
	LogLevel      string       `json:"log_level"`
	StateDir      string       `json:"state_dir"`
	DatabasePath  string       `json:"database_path"`
	SchemaVersion int          `json:"schema_version"`
	ConfigPath    string       `json:"config_path"`
	VMM           string       `json:"vmm"`
	VMMReason     string       `json:"vmm_reason,omitempty"`
	Helper        HelperStatus `json:"helper"`
	Layout        paths.Layout `json:"layout"`
	Counts        ObjectCounts `json:"counts"`
}

// HelperStatus is what bangerd knows of the root helper.
type HelperStatus struct {
	Socket    string `json:"socket"`
	Reachable bool   `json:"reachable"`
	Version   string `json:"version,omitempty"`
	PID       int    `json:"pid,omitempty"`
	Error     string `json:"error,omitempty"`
	Hint      string `json:"hint,omitempty"`
}

// ObjectCounts summarises the store.
type ObjectCounts struct {
	Images     int `json:"images"`
	VMs        int `json:"vms"`
	VMsRunning int `json:"vms_running"`
}

// Ping is the result of daemon.ping.
type Ping struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
}

// Network methods.
const (
	MethodNetworkUp   = "network.up"
	MethodNetworkDown = "network.down"
)

// NetworkStatus describes the host side of the guests' network.
type NetworkStatus struct {
	Bridge   string `json:"bridge"`
	Subnet   string `json:"subnet"`
	Gateway  string `json:"gateway"`
	Domain   string `json:"domain"`
	NAT      bool   `json:"nat"`
	BridgeUp bool   `json:"bridge_up"`
	NATTable string `json:"nat_table,omitempty"`
}

// MethodDoctor runs the host checks.
const MethodDoctor = "daemon.doctor"

// DoctorReport is the result of daemon.doctor.
type DoctorReport struct {
	OK     bool              `json:"ok"`
	Checks []hostcheck.Check `json:"checks"`
}
