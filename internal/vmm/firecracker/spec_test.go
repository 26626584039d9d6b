package firecracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The schemas of Firecracker's API that banger uses, written by hand from
// src/firecracker/swagger/firecracker.yaml of
// github.com/firecracker-microvm/firecracker at tag v1.16.1 (info.version
// 1.16.1, commit 2038188f145fb81b8d098147a10e9d9f392fd22f). Each lists
// every property the spec gives the definition, with its JSON type, enum
// and bounds, and the definition's required list. Properties that are
// $refs to objects banger never sends (rate limiters) are "object" and not
// descended into; those it sends (mem_backend, network_overrides,
// vsock_override) are checked against their definitions. Fields marked
// since 1.16 are not in the v1.14.0 spec (nor in v1.15.0's). For issue 13
// the table was compared, definition by definition (properties, types,
// enums, bounds, required lists), with the YAML of both tags. Moving to a
// new Firecracker release means re-reading these definitions in its spec.

type prop struct {
	typ      string   // string, boolean, integer, object or array
	enum     []string // allowed values of a string, when listed
	foldEnum bool     // the enum is case-insensitive (Logger.level)
	min, max *int64   // bounds of an integer, when given
	ref      string   // an object's definition; "" leaves it unchecked
	items    *prop    // an array's elements

	// What Firecracker's deserializer does beside the spec (checked in
	// fcMode only, by the fake):
	fcAlso []string // further values it takes (Logger.level: "warn")
	since  Version  // the release that added the field; unknown before
}

type schema struct {
	required []string
	props    map[string]prop
	// exactlyOne names fields of which exactly one must be sent.
	exactlyOne []string
	// fcOpen: Firecracker's type takes unknown fields (no
	// deny_unknown_fields), though banger never sends one.
	fcOpen bool
}

func bound(v int64) *int64 { return &v }

var (
	str     = prop{typ: "string"}
	boolean = prop{typ: "boolean"}
	integer = prop{typ: "integer"}
	object  = prop{typ: "object"}
)

var v116 = Version{Major: 1, Minor: 16}

var specSchemas = map[string]schema{
	"Logger": {props: map[string]prop{
		// Firecracker 1.16 also takes "warn" (logger/logging.rs,
		// LevelFilter's Deserialize), which the spec does not list.
		"level":           {typ: "string", enum: []string{"Error", "Warning", "Info", "Debug", "Trace", "Off"}, foldEnum: true, fcAlso: []string{"warn"}},
		"log_path":        str,
		"show_level":      boolean,
		"show_log_origin": boolean,
		"module":          str,
	}},
	"Metrics": {required: []string{"metrics_path"}, props: map[string]prop{
		"metrics_path": str,
	}},
	"MachineConfiguration": {required: []string{"mem_size_mib", "vcpu_count"}, props: map[string]prop{
		"cpu_template":      {typ: "string", enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}}, // $ref CpuTemplate
		"smt":               boolean,
		"mem_size_mib":      integer,
		"track_dirty_pages": boolean,
		"vcpu_count":        {typ: "integer", min: bound(1), max: bound(32)},
		"huge_pages":        {typ: "string", enum: []string{"None", "2M"}},
	}},
	"BootSource": {required: []string{"kernel_image_path"}, props: map[string]prop{
		"boot_args":         str,
		"initrd_path":       str,
		"kernel_image_path": str,
	}},
	"SerialDevice": {props: map[string]prop{
		"serial_out_path": str,
		"rate_limiter":    {typ: "object", since: v116}, // $ref TokenBucket
	}},
	"Drive": {required: []string{"drive_id", "is_root_device"}, props: map[string]prop{
		"drive_id":       str,
		"partuuid":       str,
		"is_root_device": boolean,
		"cache_type":     {typ: "string", enum: []string{"Unsafe", "Writeback"}},
		"is_read_only":   boolean,
		"path_on_host":   str,
		"rate_limiter":   object, // $ref RateLimiter
		"io_engine":      {typ: "string", enum: []string{"Sync", "Async"}},
		"socket":         str,
	}},
	"NetworkInterface": {required: []string{"host_dev_name", "iface_id"}, props: map[string]prop{
		"guest_mac":       str,
		"host_dev_name":   str,
		"iface_id":        str,
		"mtu":             {typ: "integer", min: bound(68), max: bound(65535), since: v116},
		"rx_rate_limiter": object, // $ref RateLimiter
		"tx_rate_limiter": object, // $ref RateLimiter
	}},
	"Vsock": {required: []string{"guest_cid", "uds_path"}, props: map[string]prop{
		"guest_cid": {typ: "integer", min: bound(3)},
		"uds_path":  str,
		"vsock_id":  str, // deprecated
	}},
	"Balloon": {required: []string{"amount_mib", "deflate_on_oom"}, props: map[string]prop{
		"amount_mib":               integer,
		"deflate_on_oom":           boolean,
		"stats_polling_interval_s": integer,
		"free_page_hinting":        boolean,
		"free_page_reporting":      boolean,
	}},
	"InstanceActionInfo": {required: []string{"action_type"}, props: map[string]prop{
		"action_type": {typ: "string", enum: []string{"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}},
	}},
	"Vm": {required: []string{"state"}, props: map[string]prop{
		"state": {typ: "string", enum: []string{"Paused", "Resumed"}},
	}},
	"SnapshotCreateParams": {required: []string{"mem_file_path", "snapshot_path"}, props: map[string]prop{
		"mem_file_path": str,
		"snapshot_path": str,
		"snapshot_type": {typ: "string", enum: []string{"Full", "Diff"}},
	}},
	"MemoryBackend": {required: []string{"backend_type", "backend_path"}, props: map[string]prop{
		"backend_type": {typ: "string", enum: []string{"File", "Uffd"}},
		"backend_path": str,
	}},
	"NetworkOverride": {required: []string{"iface_id", "host_dev_name"}, fcOpen: true, props: map[string]prop{
		"iface_id":      str,
		"host_dev_name": str,
	}},
	"VsockOverride": {required: []string{"uds_path"}, fcOpen: true, props: map[string]prop{
		"uds_path": str,
	}},
	"SnapshotLoadParams": {required: []string{"snapshot_path"}, exactlyOne: []string{"mem_backend", "mem_file_path"}, props: map[string]prop{
		"enable_diff_snapshots": boolean, // deprecated
		"track_dirty_pages":     boolean,
		"mem_file_path":         str, // deprecated
		"mem_backend":           {typ: "object", ref: "MemoryBackend"},
		"snapshot_path":         str,
		"resume_vm":             boolean,
		"network_overrides":     {typ: "array", items: &prop{typ: "object", ref: "NetworkOverride"}},
		"vsock_override":        {typ: "object", ref: "VsockOverride", since: v116},
		"clock_realtime":        {typ: "boolean", since: v116},
	}},
	// Answers.
	"InstanceInfo": {required: []string{"app_name", "id", "state", "vmm_version"}, props: map[string]prop{
		"app_name":    str,
		"id":          str,
		"state":       {typ: "string", enum: []string{"Not started", "Running", "Paused"}},
		"vmm_version": str,
	}},
	"FirecrackerVersion": {required: []string{"firecracker_version"}, props: map[string]prop{
		"firecracker_version": str,
	}},
	"Error": {props: map[string]prop{
		"fault_message": str,
	}},
}

// specEndpoints maps the calls banger makes (a trailing '/' takes a path
// parameter) to the definition of their body, and, for those with a path
// parameter, the body field that must repeat it. The fake routes by
// Firecracker's own rules (parsed_request.rs); this is what the spec says.
var specEndpoints = map[string]struct{ def, idField string }{
	"PUT /logger":              {def: "Logger"},
	"PUT /metrics":             {def: "Metrics"},
	"PUT /machine-config":      {def: "MachineConfiguration"},
	"PUT /boot-source":         {def: "BootSource"},
	"PUT /serial":              {def: "SerialDevice"},
	"PUT /drives/":             {def: "Drive", idField: "drive_id"},
	"PUT /network-interfaces/": {def: "NetworkInterface", idField: "iface_id"},
	"PUT /vsock":               {def: "Vsock"},
	"PUT /balloon":             {def: "Balloon"},
	"PUT /actions":             {def: "InstanceActionInfo"},
	"PATCH /vm":                {def: "Vm"},
	"PUT /snapshot/create":     {def: "SnapshotCreateParams"},
	"PUT /snapshot/load":       {def: "SnapshotLoadParams"},
}

// endpointFor finds the definition of the body of a call ("PUT /drives/x")
// and the id in its path, if it takes one.
func endpointFor(call string) (def, idField, id string, ok bool) {
	for p, e := range specEndpoints {
		if strings.HasSuffix(p, "/") && strings.HasPrefix(call, p) && len(call) > len(p) {
			return e.def, e.idField, call[len(p):], true
		}
		if call == p {
			return e.def, "", "", true
		}
	}
	return "", "", "", false
}

// deserializeFault is how Firecracker words a body its serde rejects.
func deserializeFault(format string, args ...any) error {
	return fmt.Errorf("An error occurred when deserializing the json body of a request: "+format+".", args...)
}

// bodyCheck is one way of checking bodies: the spec's schema (the zero
// value), or Firecracker's deserializer of a release (fcMode), which the
// fake uses: it takes what the spec does not list (fcAlso, fcOpen), does
// not know fields of later releases (since), and leaves the spec's bounds
// to the checks Firecracker makes after deserializing, with its own words.
type bodyCheck struct {
	fcMode  bool
	version Version
}

// checkBody checks a JSON body against definition def of the spec.
func checkBody(def string, body []byte) error { return bodyCheck{}.check(def, body) }

// check checks a JSON body against definition def: an object, no unknown
// fields (Firecracker denies them), every required field, each of the right
// type, enum and bounds.
func (bc bodyCheck) check(def string, body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return deserializeFault("%v", err)
	}
	return bc.object(def, "", v)
}

func (bc bodyCheck) object(def, where string, v any) error {
	sc, ok := specSchemas[def]
	if !ok {
		return fmt.Errorf("no schema %s in the table", def)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return deserializeFault("invalid type: %s, expected struct %s%s", jsonKind(v), def, where)
	}
	known := func(name string) (prop, bool) {
		p, ok := sc.props[name]
		if ok && bc.fcMode && bc.version.Less(p.since) {
			return prop{}, false
		}
		return p, ok
	}
	names := make([]string, 0, len(sc.props))
	for n := range sc.props {
		if _, ok := known(n); ok {
			names = append(names, "`"+n+"`")
		}
	}
	sort.Strings(names)
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p, ok := known(k)
		if !ok {
			if bc.fcMode && sc.fcOpen {
				continue
			}
			return deserializeFault("unknown field `%s`, expected one of %s%s", k, strings.Join(names, ", "), where)
		}
		if err := bc.value(k, p, obj[k]); err != nil {
			return err
		}
	}
	for _, r := range sc.required {
		if _, ok := obj[r]; !ok {
			return deserializeFault("missing field `%s`%s", r, where)
		}
	}
	if len(sc.exactlyOne) > 0 {
		n := 0
		for _, f := range sc.exactlyOne {
			if _, ok := obj[f]; ok {
				n++
			}
		}
		quoted := "`" + strings.Join(sc.exactlyOne, "` or `") + "`"
		switch { // Firecracker's words (request/snapshot.rs)
		case n == 0:
			return deserializeFault("missing field: either %s is required", quoted)
		case n > 1:
			return deserializeFault("too many fields: either %s exclusively is required", quoted)
		}
	}
	return nil
}

func (bc bodyCheck) value(name string, p prop, v any) error {
	switch p.typ {
	case "string":
		s, ok := v.(string)
		if !ok {
			return deserializeFault("invalid type: %s, expected a string for `%s`", jsonKind(v), name)
		}
		match := func(e string) bool { return e == s || p.foldEnum && strings.EqualFold(e, s) }
		if p.enum != nil && !slices.ContainsFunc(p.enum, match) && !(bc.fcMode && slices.ContainsFunc(p.fcAlso, match)) {
			return deserializeFault("unknown variant `%s`, expected one of %s for `%s`", s, strings.Join(p.enum, ", "), name)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return deserializeFault("invalid type: %s, expected a boolean for `%s`", jsonKind(v), name)
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return deserializeFault("invalid type: %s, expected an integer for `%s`", jsonKind(v), name)
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return deserializeFault("invalid type: floating point `%s`, expected an integer for `%s`", n, name)
		}
		if !bc.fcMode && (p.min != nil && i < *p.min || p.max != nil && i > *p.max) {
			return fmt.Errorf("%s = %d is out of the range the spec allows", name, i)
		}
	case "object":
		if p.ref != "" {
			return bc.object(p.ref, " in `"+name+"`", v)
		}
		if _, ok := v.(map[string]any); !ok {
			return deserializeFault("invalid type: %s, expected a struct for `%s`", jsonKind(v), name)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return deserializeFault("invalid type: %s, expected a sequence for `%s`", jsonKind(v), name)
		}
		for _, e := range a {
			if err := bc.value(name, *p.items, e); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("schema table: %s has type %q", name, p.typ)
	}
	return nil
}

func jsonKind(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("string %q", v)
	case bool:
		return fmt.Sprintf("boolean `%v`", v)
	case json.Number:
		return "number " + string(v)
	case []any:
		return "sequence"
	case map[string]any:
		return "map"
	}
	return fmt.Sprintf("%T", v)
}
