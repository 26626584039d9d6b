package qemu

import (
	"os"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/vmm"
)

func spec() vmm.Spec {
	return vmm.Spec{
		ID: "abc", Name: "demo", VCPUs: 2, MemoryMiB: 512,
		Kernel: "/i/vmlinuz", Initrd: "/i/initrd.img", Cmdline: "console=ttyS0 root=/dev/vda",
		Disks: []vmm.Disk{
			{ID: "rootfs", Path: "/v/root.qcow2", Format: "qcow2"},
			{ID: "work", Path: "/v/work.ext4", Format: "raw"},
			{ID: "config", Path: "/v/config.tar", Format: "raw", ReadOnly: true},
		},
		TapName: "tap-abc", MAC: "02:00:00:00:00:01", Accel: "tcg",
		APISocket: "/v/qmp.sock", LogPath: "/v/vmm.log", ConsolePath: "/v/console.log",
	}
}

func TestArgs(t *testing.T) {
	args, err := Args(spec())
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	want := "-name banger-demo,process=banger-demo -M microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on -accel tcg -cpu max -smp 2 -m 512 " +
		"-nodefaults -no-user-config -display none -kernel /i/vmlinuz -initrd /i/initrd.img -append console=ttyS0 root=/dev/vda " +
		"-chardev file,id=console,path=/v/console.log,append=on -serial chardev:console " +
		"-drive id=vda,file=/v/root.qcow2,format=qcow2,if=none,cache=unsafe -device virtio-blk-device,drive=vda " +
		"-drive id=vdb,file=/v/work.ext4,format=raw,if=none,cache=unsafe -device virtio-blk-device,drive=vdb " +
		"-drive id=vdc,file=/v/config.tar,format=raw,if=none,cache=unsafe,readonly=on -device virtio-blk-device,drive=vdc " +
		"-netdev tap,id=net0,ifname=tap-abc,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=02:00:00:00:00:01 " +
		"-object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0 " +
		"-qmp unix:/v/qmp.sock,server=on,wait=off"
	if got != want {
		t.Fatalf("argv\n got %s\nwant %s", got, want)
	}
}

// An agent socket adds the virtio-serial port the guest agent opens.
func TestArgsAgentPort(t *testing.T) {
	s := spec()
	s.AgentSocket = "/v/agent.sock"
	args, err := Args(s)
	if err != nil {
		t.Fatal(err)
	}
	want := "-device virtio-serial-device,max_ports=2 -chardev socket,id=agent,path=/v/agent.sock,server=on,wait=off " +
		"-device virtserialport,chardev=agent,name=banger.agent -object rng-random"
	if got := strings.Join(args, " "); !strings.Contains(got, want) {
		t.Fatalf("argv lacks %q:\n%s", want, got)
	}
	s.AgentSocket = "/v/a,b"
	if _, err := Args(s); err == nil {
		t.Error("a ',' in the agent socket path was accepted")
	}
}

func TestArgsKVMAndTapFD(t *testing.T) {
	s := spec()
	s.Accel = "kvm"
	s.TapFile = os.Stdin
	args, _ := Args(s)
	got := strings.Join(args, " ")
	for _, want := range []string{"-accel kvm -cpu host", "-netdev tap,id=net0,fd=3 "} {
		if !strings.Contains(got, want) {
			t.Fatalf("argv lacks %q: %s", want, got)
		}
	}
}

func TestArgsRefusesInjection(t *testing.T) {
	for name, mut := range map[string]func(*vmm.Spec){
		"comma in disk":   func(s *vmm.Spec) { s.Disks[0].Path = "/v/x,file=/etc/shadow" },
		"comma in kernel": func(s *vmm.Spec) { s.Kernel = "/i/k,x" },
		"bad accel":       func(s *vmm.Spec) { s.Accel = "hvf" },
		"bad format":      func(s *vmm.Spec) { s.Disks[1].Format = "vmdk" },
		"no disks":        func(s *vmm.Spec) { s.Disks = nil },
	} {
		s := spec()
		mut(&s)
		if _, err := Args(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A host folder adds a vhost-user-fs device per share, modern virtio-mmio,
// and needs shared memory.
func TestArgsFS(t *testing.T) {
	s := spec()
	s.FS = []vmm.FSDevice{{Tag: "banger0", Socket: "/v/fs0.sock"}, {Tag: "banger1", Socket: "/v/fs1.sock"}}
	if _, err := Args(s); err == nil || !strings.Contains(err.Error(), "shared memory") {
		t.Fatalf("a share without shared memory: %v", err)
	}
	s.SharedMemory = true
	argv := mustArgs(t, s)
	want := "-global virtio-mmio.force-legacy=false -chardev socket,id=fs0,path=/v/fs0.sock -device vhost-user-fs-device,chardev=fs0,tag=banger0 " +
		"-chardev socket,id=fs1,path=/v/fs1.sock -device vhost-user-fs-device,chardev=fs1,tag=banger1 -object rng-random"
	if got := strings.Join(argv, " "); !strings.Contains(got, want) {
		t.Fatalf("argv lacks %q:\n%s", want, got)
	}
	if _, err := args(s, &incoming{memory: "/v/mem"}); err == nil {
		t.Error("a restore with a share was accepted")
	}
	s.FS[1].Socket = "/v/a,b"
	if _, err := Args(s); err == nil {
		t.Error("a ',' in a share's socket was accepted")
	}
	s = spec()
	if got := strings.Join(mustArgs(t, s), " "); strings.Contains(got, "force-legacy") {
		t.Error("a VM without shares got modern virtio-mmio (its device state would differ from its templates')")
	}
}

func mustArgs(t *testing.T, s vmm.Spec) []string {
	t.Helper()
	a, err := Args(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
