// Package agent is the protocol between banger's host side and
// banger-agent in the guest (docs/agent.md), shared by both ends: frames,
// the version handshake, the wire messages, the host's yamux session and
// the host side of every operation, the tar helpers both ends copy files
// with, and the host end of Firecracker's vsock.
//
// On a fresh byte stream (the virtio-serial port's unix socket, or a vsock
// connection) the host calls Dial, which runs ClientHandshake and yamux.
// Each operation is one stream (Session.Open) on which the host calls one
// of Hello, Exec, Stat, Put, Get, Connect, SetTime, Shutdown or Identity
// (a clone's new hostname, MAC, address, machine id, host key, RNG seed
// and clock). Those take
// any io.ReadWriter, so the CLI can speak them end to end over the unix
// connection bangerd splices onto a stream. The guest's server is package
// agentd.
//
// Errors the agent reports are *RemoteError, which errors.Is maps to
// banger's rpc sentinels (rpc.ErrNotFound, ...).
package agent
