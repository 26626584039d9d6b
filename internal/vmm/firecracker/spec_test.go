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
// $refs to other objects (rate limiters) are "object" and not descended
// into: banger never sends them. Moving to a new Firecracker release
// means re-reading these definitions in its spec.

type prop struct {
	typ      string   // string, boolean, integer or object
	enum     []string // allowed values of a string, when listed
	foldEnum bool     // the enum is case-insensitive (Logger.level)
	min, max *int64   // bounds of an integer, when given
}

type schema struct {
	required []string
	props    map[string]prop
}

func bound(v int64) *int64 { return &v }

var (
	str     = prop{typ: "string"}
	boolean = prop{typ: "boolean"}
	integer = prop{typ: "integer"}
	object  = prop{typ: "object"}
)

var specSchemas = map[string]schema{
	"Logger": {props: map[string]prop{
		"level":           {typ: "string", enum: []string{"Error", "Warning", "Info", "Debug", "Trace", "Off"}, foldEnum: true},
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
		"rate_limiter":    object, // $ref TokenBucket
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
		"mtu":             {typ: "integer", min: bound(68), max: bound(65535)},
		"rx_rate_limiter": object, // $ref RateLimiter
		"tx_rate_limiter": object, // $ref RateLimiter
	}},
	"Vsock": {required: []string{"guest_cid", "uds_path"}, props: map[string]prop{
		"guest_cid": {typ: "integer", min: bound(3)},
		"uds_path":  str,
		"vsock_id":  str, // deprecated
	}},
	"InstanceActionInfo": {required: []string{"action_type"}, props: map[string]prop{
		"action_type": {typ: "string", enum: []string{"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}},
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

// specPutEndpoints maps the PUT paths banger uses (a trailing '/' takes a
// path parameter) to the definition of their body, and, for those with a
// path parameter, the body field that must repeat it.
var specPutEndpoints = map[string]struct{ def, idField string }{
	"/logger":              {def: "Logger"},
	"/metrics":             {def: "Metrics"},
	"/machine-config":      {def: "MachineConfiguration"},
	"/boot-source":         {def: "BootSource"},
	"/serial":              {def: "SerialDevice"},
	"/drives/":             {def: "Drive", idField: "drive_id"},
	"/network-interfaces/": {def: "NetworkInterface", idField: "iface_id"},
	"/vsock":               {def: "Vsock"},
	"/actions":             {def: "InstanceActionInfo"},
}

// endpointFor finds the definition of the body of PUT path and the id in
// the path, if it takes one.
func endpointFor(path string) (def, idField, id string, ok bool) {
	for p, e := range specPutEndpoints {
		if strings.HasSuffix(p, "/") && strings.HasPrefix(path, p) && len(path) > len(p) {
			return e.def, e.idField, path[len(p):], true
		}
		if path == p {
			return e.def, "", "", true
		}
	}
	return "", "", "", false
}

// deserializeFault is how Firecracker words a body its serde rejects.
func deserializeFault(format string, args ...any) error {
	return fmt.Errorf("An error occurred when deserializing the json body of a request: "+format+".", args...)
}

// checkBody checks a JSON body against definition def as Firecracker's
// deserializer would: an object, no unknown fields (Firecracker denies
// them), every required field, each of the right type, enum and bounds.
func checkBody(def string, body []byte) error {
	sc, ok := specSchemas[def]
	if !ok {
		return fmt.Errorf("no schema %s in the table", def)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return deserializeFault("%v", err)
	}
	if obj == nil {
		return deserializeFault("invalid type: null, expected struct %s", def)
	}
	names := make([]string, 0, len(sc.props))
	for n := range sc.props {
		names = append(names, "`"+n+"`")
	}
	sort.Strings(names)
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p, ok := sc.props[k]
		if !ok {
			return deserializeFault("unknown field `%s`, expected one of %s", k, strings.Join(names, ", "))
		}
		if err := checkValue(k, p, obj[k]); err != nil {
			return err
		}
	}
	for _, r := range sc.required {
		if _, ok := obj[r]; !ok {
			return deserializeFault("missing field `%s`", r)
		}
	}
	return nil
}

func checkValue(name string, p prop, v any) error {
	switch p.typ {
	case "string":
		s, ok := v.(string)
		if !ok {
			return deserializeFault("invalid type: %s, expected a string for `%s`", jsonKind(v), name)
		}
		if p.enum != nil && !slices.ContainsFunc(p.enum, func(e string) bool {
			return e == s || p.foldEnum && strings.EqualFold(e, s)
		}) {
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
		if p.min != nil && i < *p.min || p.max != nil && i > *p.max {
			return fmt.Errorf("%s = %d is out of the range the spec allows", name, i)
		}
	case "object":
		if _, ok := v.(map[string]any); !ok {
			return deserializeFault("invalid type: %s, expected a struct for `%s`", jsonKind(v), name)
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
