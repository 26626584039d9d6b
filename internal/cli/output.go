package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// kv writes "key  value" lines aligned.
func kv(w io.Writer, pairs [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, p := range pairs {
		fmt.Fprintf(tw, "%s\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

// renderLogLine turns one JSON log record into a readable line:
// time level message key=value ...; lines that are not JSON pass through.
func renderLogLine(line []byte) string {
	var rec map[string]any
	if err := json.Unmarshal(line, &rec); err != nil {
		return string(line)
	}
	var b strings.Builder
	if ts, ok := rec["time"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			ts = t.Local().Format("2006-01-02 15:04:05.000")
		}
		b.WriteString(ts)
		b.WriteByte(' ')
	}
	if lv, ok := rec["level"].(string); ok {
		fmt.Fprintf(&b, "%-5s ", lv)
	}
	if msg, ok := rec["msg"].(string); ok {
		b.WriteString(msg)
	}
	keys := make([]string, 0, len(rec))
	for k := range rec {
		switch k {
		case "time", "level", "msg", "component":
			continue
		}
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		// op_id first, then alphabetical.
		if (keys[i] == "op_id") != (keys[j] == "op_id") {
			return keys[i] == "op_id"
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		v := rec[k]
		s, ok := v.(string)
		if !ok {
			raw, _ := json.Marshal(v)
			s = string(raw)
		} else if strings.ContainsAny(s, " \t\"=") || s == "" {
			s = fmt.Sprintf("%q", s)
		}
		fmt.Fprintf(&b, " %s=%s", k, s)
	}
	return b.String()
}

func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}
