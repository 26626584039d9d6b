package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/model"
)

// identify gives a VM restored from a snapshot its own identity through
// its guest agent, before anything can reach it (its link is still down):
// its MAC (the device state brought the snapshot's back), address, route,
// a flushed neighbour table, hostname, a new machine-id, its host key
// (made on the host and pinned in known_hosts already: no trust on first
// use), 64 bytes of the host's entropy credited to the kernel's RNG and a
// reseed, and the clock. The DNS record is the VM's row: bangerd's DNS
// answers from it.
//
// fresh says the snapshot's agent was waiting for a handshake (a template:
// its session was ended first), so the first one is answered and can be
// given long (ten clones restored at once answer slowly); one of a VM
// taken mid-session is swallowed, and retried soon.
func (d *Daemon) identify(ctx context.Context, vm model.VM, pid int, hostKey string, deadline time.Time, fresh bool) (string, error) {
	req, err := d.identityOf(vm, hostKey)
	if err != nil {
		return "", err
	}
	// A restored guest's agent may still be in the snapshot's session: it
	// takes our handshake for that session's frames, drops it and waits
	// for the next. So an attempt's handshake gets a short time, growing
	// (a guest slowed by its neighbours answers late, not never).
	attempt := 250 * time.Millisecond
	if fresh {
		attempt = 4 * time.Second
	}
	start, tries := time.Now(), 0
	var sessionAt time.Duration
	for {
		tries++
		adl := time.Now().Add(attempt)
		if adl.After(deadline) {
			adl = deadline
		}
		if attempt < 4*time.Second {
			attempt *= 2
		}
		actx, acancel := context.WithDeadline(ctx, adl)
		_, err := d.agentSession(actx, vm)
		acancel()
		if err != nil {
			d.agents.drop(vm.ID)
			if berr := d.checkBooting(ctx, vm, pid, deadline); berr != nil {
				return "", fmt.Errorf("%w (the agent: %v)", berr, err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		sessionAt = time.Since(start)
		ictx, cancel := context.WithDeadline(ctx, deadline)
		st, err := d.agentStream(ictx, vm)
		if err == nil {
			var res agent.IdentityResult
			req.Time = time.Now() // not the time before the retries
			res, err = agent.Identity(ictx, st, req)
			st.Close()
			cancel()
			if err == nil {
				var steps []string
				for _, s := range res.Applied {
					steps = append(steps, fmt.Sprintf("%s %.0f", s.Step, float64(s.DurationUS)/1000))
				}
				return fmt.Sprintf("the agent answered in %d ms (attempt %d); %s: %s ms, %.1f ms in the guest (sshd reloaded: %v)",
					sessionAt.Milliseconds(), tries, res.Interface, strings.Join(steps, ", "), float64(res.DurationUS)/1000, res.SSHDReloaded), nil
			}
			if rpcRemote(err) {
				return "", fmt.Errorf("the guest agent refused the identity: %w", err)
			}
		} else {
			cancel()
		}
		if berr := d.checkBooting(ctx, vm, pid, deadline); berr != nil {
			return "", fmt.Errorf("%w (the agent: %v)", berr, err)
		}
		d.agents.drop(vm.ID)
		time.Sleep(10 * time.Millisecond)
	}
}

// rpcRemote reports whether err is the agent's own answer (retrying will
// not change it).
func rpcRemote(err error) bool {
	var re *agent.RemoteError
	return errors.As(err, &re)
}

// identityOf is vm's identity as the agent applies it.
func (d *Daemon) identityOf(vm model.VM, hostKey string) (agent.IdentityRequest, error) {
	var req agent.IdentityRequest
	n, ok := d.cachedNetwork()
	if !ok {
		return req, fmt.Errorf("the network of this daemon is not known yet")
	}
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil {
		return req, fmt.Errorf("vm %s: guest ip %q: %w", vm.Name, vm.Runtime.GuestIP, err)
	}
	mac, err := net.ParseMAC(vm.Runtime.MAC)
	if err != nil {
		return req, fmt.Errorf("vm %s: mac %q: %w", vm.Name, vm.Runtime.MAC, err)
	}
	priv, err := os.ReadFile(hostKey)
	if err != nil {
		return req, err
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return req, err
	}
	var mid [16]byte
	entropy := make([]byte, 64)
	if _, err := rand.Read(mid[:]); err != nil {
		return req, err
	}
	if _, err := rand.Read(entropy); err != nil {
		return req, err
	}
	gw := n.Gateway()
	return agent.IdentityRequest{
		Hostname: vm.Name, MAC: mac,
		Address: netip.PrefixFrom(ip, n.Subnet.Bits()), Gateway: gw, DNS: gw,
		MachineID: hex.EncodeToString(mid[:]), HostKey: priv, HostKeyPub: pub,
		Entropy: entropy, Time: time.Now(),
	}, nil
}
