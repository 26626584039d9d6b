// Package hostcheck probes what this host can do for banger: whether KVM
// really runs an ordinary guest, which VMM binaries exist, and the other
// checks `banger doctor` reports. Probes act for real (they open devices and
// run tiny guests) rather than trusting that a file exists.
package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM ioctl numbers (linux/kvm.h).
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmRun                 = 0xAE80
	kvmGetRegs             = 0x8090AE81
	kvmSetRegs             = 0x4090AE82
	kvmGetSregs            = 0x8138AE83
	kvmSetSregs            = 0x4138AE84

	kvmExitIO  = 2
	kvmExitHLT = 5
)

type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type kvmSegment struct {
	Base                                           uint64
	Limit                                          uint32
	Selector                                       uint16
	Type, Present, DPL, DB, S, L, G, AVL, Unusable uint8
	_                                              uint8
}

type kvmDTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT kvmSegment
	GDT, IDT                        kvmDTable
	CR0, CR2, CR3, CR4, CR8, EFER   uint64
	APICBase                        uint64
	InterruptBitmap                 [4]uint64
}

type kvmUserspaceMemoryRegion struct {
	Slot, Flags               uint32
	GuestPhysAddr, MemorySize uint64
	UserspaceAddr             uint64
}

// KVMResult is the outcome of the KVM probe.
type KVMResult struct {
	// DeviceExists: /dev/kvm is there.
	DeviceExists bool `json:"device_exists"`
	// Usable: a tiny real-mode guest ran to its HLT, as the entry of an
	// ordinary guest kernel needs.
	Usable bool `json:"usable"`
	// Detail says what happened, in words for the user.
	Detail string `json:"detail"`
}

// ProbeKVM runs a three-instruction guest (mov al,0x42; out 0x10,al; hlt)
// through the KVM API, first in real mode, where a kernel's boot code
// starts, then in 64-bit long mode with paging, where it ends up, and checks
// each exits with that I/O and then the HLT. A host can have a working /dev/kvm that still cannot run
// such a guest (a KVM that only runs specially built guests, say): then an
// ordinary guest kernel will not boot either, and qemu must use tcg.
func ProbeKVM() KVMResult {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return KVMResult{Detail: "/dev/kvm does not exist: no hardware virtualization here (or the kvm module is not loaded)"}
	}
	type out struct {
		err error
	}
	ch := make(chan out, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var err error
		for _, m := range []guestMode{modeReal, modeLong, modeSwitch} {
			if err = runTinyGuest(m); err != nil {
				break
			}
		}
		ch <- out{err}
	}()
	select {
	case o := <-ch:
		if o.err != nil {
			return KVMResult{DeviceExists: true, Detail: o.err.Error()}
		}
		return KVMResult{DeviceExists: true, Usable: true, Detail: "test guests in real mode, in long mode with paging, and one switching itself from real to protected mode ran to completion under KVM"}
	case <-time.After(3 * time.Second):
		return KVMResult{DeviceExists: true, Detail: "the KVM test guest did not finish within 3s"}
	}
}

func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// Guest memory layout of the probe: code at 0x1000, then the identity
// page tables of long mode (PML4, PDPT, PD with one 2 MiB page).
const (
	probeMemSize = 0x200000
	probeCode    = 0x1000
	probePML4    = 0x2000
	probePDPT    = 0x3000
	probePD      = 0x4000
)

type guestMode int

const (
	modeReal   guestMode = iota // real mode, set up by the host
	modeLong                    // 64-bit long mode with paging, set up by the host
	modeSwitch                  // real mode that switches itself to protected mode
)

func (m guestMode) String() string {
	return [...]string{"real-mode", "long-mode", "mode-switching"}[m]
}

// switchCode starts in real mode at probeCode, loads a GDT, sets CR0.PE and
// far-jumps into 32-bit code that does the I/O and halts: the step every
// ordinary kernel's boot code takes. GDT at +0x100, GDTR at +0x120.
var switchCode = []byte{
	0xFA,                         // cli
	0x0F, 0x01, 0x16, 0x20, 0x11, // lgdt [0x1120]
	0x0F, 0x20, 0xC0, // mov eax, cr0
	0x0C, 0x01, // or al, 1
	0x0F, 0x22, 0xC0, // mov cr0, eax
	0xEA, 0x13, 0x10, 0x08, 0x00, // jmp 0x08:0x1013
	0xB0, 0x42, 0xE6, 0x10, 0xF4, // mov al,0x42; out 0x10,al; hlt (32-bit)
}

var switchGDT = []byte{
	0, 0, 0, 0, 0, 0, 0, 0, // null
	0xFF, 0xFF, 0, 0, 0, 0x9A, 0xCF, 0, // flat 32-bit code
}

func runTinyGuest(m guestMode) error {
	if err := tinyGuest(m); err != nil {
		return fmt.Errorf("%s test guest: %w", m, err)
	}
	return nil
}

func tinyGuest(m guestMode) error {
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/kvm: %w", err)
	}
	defer unix.Close(kvm)
	if v, err := ioctl(kvm, kvmGetAPIVersion, 0); err != nil || v != 12 {
		return fmt.Errorf("KVM API version %d (%v), want 12", v, err)
	}
	vmfd, err := ioctl(kvm, kvmCreateVM, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	vm := int(vmfd)
	defer unix.Close(vm)

	mem, err := unix.Mmap(-1, 0, probeMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap guest memory: %w", err)
	}
	defer unix.Munmap(mem)
	if m == modeSwitch {
		copy(mem[probeCode:], switchCode)
		copy(mem[probeCode+0x100:], switchGDT)
		copy(mem[probeCode+0x120:], []byte{byte(len(switchGDT) - 1), 0, 0x00, 0x11, 0, 0})
	} else {
		copy(mem[probeCode:], []byte{0xB0, 0x42, 0xE6, 0x10, 0xF4}) // mov al,0x42; out 0x10,al; hlt
	}
	region := kvmUserspaceMemoryRegion{MemorySize: probeMemSize, UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctl(vm, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	vcpufd, err := ioctl(vm, kvmCreateVCPU, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	vcpu := int(vcpufd)
	defer unix.Close(vcpu)
	size, err := ioctl(kvm, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	run, err := unix.Mmap(vcpu, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap kvm_run: %w", err)
	}
	defer unix.Munmap(run)

	var sregs kvmSregs
	if _, err := ioctl(vcpu, kvmGetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	if m == modeLong {
		setupLongMode(mem, &sregs)
	} else {
		sregs.CS.Base, sregs.CS.Selector = 0, 0
	}
	if _, err := ioctl(vcpu, kvmSetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	regs := kvmRegs{RIP: probeCode, RFLAGS: 2, RSP: probeMemSize}
	if _, err := ioctl(vcpu, kvmSetRegs, uintptr(unsafe.Pointer(&regs))); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}

	sawIO := false
	for i := 0; i < 4; i++ {
		if _, err := ioctl(vcpu, kvmRun, 0); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("KVM_RUN: %w", err)
		}
		reason := *(*uint32)(unsafe.Pointer(&run[8]))
		switch reason {
		case kvmExitIO:
			port := *(*uint16)(unsafe.Pointer(&run[34]))
			off := *(*uint64)(unsafe.Pointer(&run[40]))
			if port != 0x10 || off >= uint64(len(run)) || run[off] != 0x42 {
				return fmt.Errorf("I/O on port %#x, want 0x10 with 0x42", port)
			}
			sawIO = true
		case kvmExitHLT:
			if !sawIO {
				return errors.New("halted without running its code")
			}
			return nil
		default:
			return fmt.Errorf("exited with reason %d, want I/O then HLT", reason)
		}
	}
	return errors.New("did not halt")
}

// setupLongMode writes identity page tables for the first 2 MiB and puts
// the vCPU in 64-bit long mode with paging, as a kernel runs.
func setupLongMode(mem []byte, s *kvmSregs) {
	const present, rw, user, pageSize = 1, 2, 4, 0x80
	put := func(addr int, v uint64) { *(*uint64)(unsafe.Pointer(&mem[addr])) = v }
	put(probePML4, probePDPT|present|rw|user)
	put(probePDPT, probePD|present|rw|user)
	put(probePD, present|rw|user|pageSize)

	s.CR3 = probePML4
	s.CR4 = 1 << 5        // PAE
	s.CR0 = 0x80050033    // PE MP ET NE WP AM PG
	s.EFER = 1<<8 | 1<<10 // LME LMA
	code := kvmSegment{Limit: 0xffffffff, Selector: 1 << 3, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	data := code
	data.Type, data.Selector, data.L = 3, 2<<3, 0
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
}
