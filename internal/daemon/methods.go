package daemon

import (
	"context"
	"os"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

func (d *Daemon) register(s *rpc.Server) {
	rpc.Register(s, api.MethodDaemonPing, d.ping)
	rpc.Register(s, api.MethodDaemonStatus, d.status)
	rpc.Register(s, api.MethodDaemonStop, d.stopMethod)
	rpc.Register(s, api.MethodNetworkUp, d.networkUp)
	rpc.Register(s, api.MethodNetworkDown, d.networkDown)
	rpc.Register(s, api.MethodDoctor, d.doctor)
	rpc.Register(s, api.MethodVerify, d.verify)
	rpc.Register(s, api.MethodImageBuildBegin, d.imageBuildBegin)
	rpc.Register(s, api.MethodImageBuildStatus, d.imageBuildStatus)
	rpc.Register(s, api.MethodImageList, d.imageList)
	rpc.Register(s, api.MethodImageShow, d.imageShow)
	rpc.Register(s, api.MethodImageDelete, d.imageDelete)
	rpc.Register(s, api.MethodImageRebuildSeed, d.imageRebuildSeed)
	rpc.Register(s, api.MethodImageImport, d.imageImport)
	rpc.Register(s, api.MethodVMCreateBegin, d.vmCreateBegin)
	rpc.Register(s, api.MethodVMCreateStatus, d.operationStatus)
	rpc.Register(s, api.MethodVMStartBegin, d.vmStartBegin)
	rpc.Register(s, api.MethodVMStartStatus, d.operationStatus)
	rpc.Register(s, api.MethodVMStop, d.vmStop)
	rpc.Register(s, api.MethodVMDelete, d.vmDelete)
	rpc.Register(s, api.MethodVMList, d.vmList)
	rpc.Register(s, api.MethodVMShow, d.vmShow)
	rpc.Register(s, api.MethodVMSSHInfo, d.vmSSHInfo)
	rpc.Register(s, api.MethodVMAgent, d.vmAgent)
	rpc.Register(s, api.MethodVMPause, d.vmPause)
	rpc.Register(s, api.MethodVMResume, d.vmResume)
	rpc.Register(s, api.MethodVMSnapshot, d.vmSnapshot)
	rpc.Register(s, api.MethodVMRestoreBegin, d.vmRestoreBegin)
	rpc.Register(s, api.MethodVMForkBegin, d.vmForkBegin)
	rpc.Register(s, api.MethodSnapshotList, d.snapshotList)
	rpc.Register(s, api.MethodSnapshotShow, d.snapshotShow)
	rpc.Register(s, api.MethodSnapshotDelete, d.snapshotDelete)
	rpc.Register(s, api.MethodImageWarmBegin, d.imageWarmBegin)
}

type noParams struct{}

func (d *Daemon) ping(ctx context.Context, _ noParams) (api.Ping, error) {
	return api.Ping{PID: os.Getpid(), Version: version.String()}, nil
}

func (d *Daemon) status(ctx context.Context, _ noParams) (api.DaemonStatus, error) {
	st := api.DaemonStatus{
		PID:           os.Getpid(),
		UID:           os.Getuid(),
		Version:       version.String(),
		StartedAt:     d.started.UTC(),
		UptimeSeconds: time.Since(d.started).Round(time.Millisecond).Seconds(),
		Socket:        d.layout.DaemonSocket(),
		LogPath:       d.layout.DaemonLog(),
		LogLevel:      d.opts.LogLevel,
		StateDir:      d.layout.StateDir,
		DatabasePath:  d.layout.Database(),
		ConfigPath:    d.opts.ConfigPath,
		Layout:        d.layout,
	}
	vmm, accel, reason := d.chooseVMM(ctx, d.probeKernel(ctx))
	st.VMM, st.VMMReason = vmm+" ("+accel+")", reason
	v, err := d.store.SchemaVersion(ctx)
	if err != nil {
		return st, err
	}
	st.SchemaVersion = v
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return st, err
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return st, err
	}
	st.Counts.Images, st.Counts.VMs = len(imgs), len(vms)
	for _, vm := range vms {
		if vm.Runtime.State.Live() {
			st.Counts.VMsRunning++
		}
	}
	st.Helper = d.helperStatus(ctx)
	return st, nil
}

func (d *Daemon) stopMethod(ctx context.Context, _ noParams) (api.Ping, error) {
	d.log.InfoContext(ctx, "stop requested")
	d.requestStop()
	return api.Ping{PID: os.Getpid(), Version: version.String()}, nil
}
