package virtualmesh

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// The resource as written. Pointers tell "absent or null" from "given".
type rawVirtualMesh struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Metadata   rawMetadata `json:"metadata"`
	Spec       rawSpec     `json:"spec"`
}

type rawMetadata struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type rawSpec struct {
	DisplayName          string                   `json:"displayName"`          // v1alpha1
	MTLSConfig           *rawMTLSConfig           `json:"mtlsConfig"`           // v1alpha2, v1
	CertificateAuthority *rawCertificateAuthority `json:"certificateAuthority"` // v1alpha1
	Federation           *rawFederation           `json:"federation"`
	Shared               *struct{}                `json:"shared"`               // v1alpha1 trust model
	Limited              *map[string]any          `json:"limited"`              // v1alpha1, refused
	EnforceAccessControl *bool                    `json:"enforceAccessControl"` // v1alpha1
	GlobalAccessPolicy   string                   `json:"globalAccessPolicy"`   // v1alpha2, v1
	Meshes               []rawMesh                `json:"meshes"`
}

type rawMTLSConfig struct {
	AutoRestartPods bool            `json:"autoRestartPods"`
	Shared          *rawSharedTrust `json:"shared"`
	Limited         *map[string]any `json:"limited"` // refused
}

type rawSharedTrust struct {
	RootCertificateAuthority *rawRootCA `json:"rootCertificateAuthority"`
}

type rawRootCA struct {
	Generated *rawGenerated `json:"generated"`
	Secret    *rawObjectRef `json:"secret"` // refused
	Files     *rawRootFiles `json:"files"`  // meshfed's
}

type rawCertificateAuthority struct {
	Builtin  *rawGenerated `json:"builtin"`
	Provided *rawProvided  `json:"provided"` // refused
	Files    *rawRootFiles `json:"files"`    // meshfed's
}

type rawProvided struct {
	Certificate *rawObjectRef `json:"certificate"`
}

type rawObjectRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

type rawGenerated struct {
	TTLDays         *int   `json:"ttlDays"`
	RSAKeySizeBytes *int   `json:"rsaKeySizeBytes"`
	OrgName         string `json:"orgName"`
}

type rawRootFiles struct {
	RootCertFile string `json:"rootCertFile"`
	RootKeyFile  string `json:"rootKeyFile"`
}

type rawFederation struct {
	Mode string `json:"mode"`
}

type rawMesh struct {
	Name        string `json:"name"`
	Namespace   string `json:"namespace"`
	TrustDomain string `json:"trustDomain"` // meshfed's
	Address     string `json:"address"`     // meshfed's
}

// Error is a problem with a VirtualMesh file. Field is the dotted path of
// the field at fault ("spec.meshes[1].trustDomain"), empty for the file as a
// whole; Line is 0 when it could not be found.
type Error struct {
	File   string
	Line   int
	Field  string
	Reason string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc += ":" + strconv.Itoa(e.Line)
	}
	if e.Field == "" {
		return "virtualmesh: " + loc + ": " + e.Reason
	}
	return "virtualmesh: " + loc + ": " + e.Field + ": " + e.Reason
}

type parser struct {
	file string
	data []byte
}

func (p *parser) errorf(field, format string, args ...any) *Error {
	e := &Error{File: p.file, Field: field, Reason: fmt.Sprintf(format, args...)}
	if field != "" {
		e.Line = lineOf(p.data, splitPath(field))
	}
	return e
}

// yamlLine finds the line number the YAML decoder puts in its messages.
var yamlLine = regexp.MustCompile(`line (\d+): `)

// decode parses the YAML strictly: syntax errors and duplicate keys (the
// YAML decoder's), then unknown fields and wrong types (walk, which names
// the path), then sigs.k8s.io/yaml's strict decoding into the raw types.
func (p *parser) decode() (*rawVirtualMesh, error) {
	if err := p.singleDocument(); err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSONStrict(p.data)
	if err != nil {
		e := &Error{File: p.file, Reason: err.Error()}
		if m := yamlLine.FindStringSubmatchIndex(e.Reason); m != nil {
			e.Line, _ = strconv.Atoi(e.Reason[m[2]:m[3]])
			e.Reason = strings.TrimSpace(strings.TrimPrefix(e.Reason[m[1]:], "yaml: "))
			e.Reason = strings.ReplaceAll(e.Reason, "\n", " ")
		}
		return nil, e
	}
	var tree any
	d := json.NewDecoder(bytes.NewReader(j))
	d.UseNumber()
	if err := d.Decode(&tree); err != nil {
		return nil, p.errorf("", "%v", err)
	}
	if tree == nil {
		return nil, p.errorf("", "the file is empty; it should hold one VirtualMesh")
	}
	if e := p.walk("", tree, reflect.TypeFor[rawVirtualMesh]()); e != nil {
		return nil, e
	}
	var raw rawVirtualMesh
	if err := yaml.UnmarshalStrict(p.data, &raw); err != nil {
		return nil, p.errorf("", "%v", err)
	}
	return &raw, nil
}

// singleDocument refuses a file of several YAML documents: the decoder
// would read the first and silently ignore the rest.
func (p *parser) singleDocument() error {
	content := false
	for i, line := range strings.Split(string(p.data), "\n") {
		line = strings.TrimRight(line, " \t\r")
		switch {
		case line == "---" || strings.HasPrefix(line, "--- "):
			if content {
				return &Error{File: p.file, Line: i + 1, Reason: "a second YAML document; give one VirtualMesh per file"}
			}
		case line != "" && !strings.HasPrefix(strings.TrimSpace(line), "#"):
			content = true
		}
	}
	return nil
}

// walk checks the decoded tree v against the raw type t: every key of a
// mapping must be a field of t (case-sensitively, where encoding/json would
// match any case), and every value must have the field's type.
func (p *parser) walk(path string, v any, t reflect.Type) *Error {
	if v == nil {
		return nil // null: the field keeps its zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return p.errorf(pathOr(path), "want a mapping, got %s", describe(v))
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			f, ok := fields[k]
			if !ok {
				return p.unknownField(path, k, fields)
			}
			if e := p.walk(join(path, k), m[k], f.Type); e != nil {
				return e
			}
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return p.errorf(pathOr(path), "want a list, got %s", describe(v))
		}
		for i, item := range l {
			if e := p.walk(fmt.Sprintf("%s[%d]", path, i), item, t.Elem()); e != nil {
				return e
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return p.errorf(pathOr(path), "want a mapping, got %s", describe(v))
		}
		if t.Elem().Kind() == reflect.String {
			for k, item := range m {
				if _, ok := item.(string); !ok && item != nil {
					return p.errorf(join(path, k), "want a string, got %s; quote it", describe(item))
				}
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return p.errorf(path, "want a string, got %s; quote it", describe(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return p.errorf(path, "want true or false, got %s", describe(v))
		}
	case reflect.Int:
		n, ok := v.(json.Number)
		if !ok {
			return p.errorf(path, "want a whole number, got %s", describe(v))
		}
		if _, err := strconv.ParseInt(string(n), 10, 32); err != nil {
			return p.errorf(path, "want a whole number, got %s", n)
		}
	}
	return nil
}

func (p *parser) unknownField(path, key string, fields map[string]reflect.StructField) *Error {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if strings.EqualFold(n, key) {
			return p.errorf(join(path, key), "unknown field; did you mean %q? (field names are case-sensitive)", n)
		}
	}
	return p.errorf(join(path, key), "unknown field; the fields here are %s", strings.Join(names, ", "))
}

// jsonFields maps the JSON names of t's fields to the fields.
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

func describe(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + string(v)
	case bool:
		return "the boolean " + strconv.FormatBool(v)
	}
	return fmt.Sprintf("%T", v)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func pathOr(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}

// splitPath turns "spec.meshes[1].name" into spec, meshes, [1], name.
func splitPath(path string) []string {
	var out []string
	for part := range strings.SplitSeq(path, ".") {
		for {
			i := strings.IndexByte(part, '[')
			if i < 0 {
				break
			}
			if i > 0 {
				out = append(out, part[:i])
			}
			j := strings.IndexByte(part, ']')
			if j < i {
				break
			}
			out = append(out, part[i:j+1])
			part = part[j+1:]
		}
		if part != "" {
			out = append(out, part)
		}
	}
	return out
}

// lineOf returns the 1-based line on which the field at path is written,
// for block-style YAML: it follows keys and list items by indentation. When
// the field itself is not on a line of its own (flow style, or a field that
// is missing), it returns the line of the deepest enclosing field found, and
// 0 when there is none.
func lineOf(data []byte, path []string) int {
	type frame struct {
		indent int
		name   string
		item   int // index for a list item, -1 for a key
	}
	var stack []frame
	best, bestDepth := 0, 0
	match := func(line int) int {
		if len(stack) > len(path) {
			return 0
		}
		for i, f := range stack {
			if f.name != path[i] {
				return 0
			}
		}
		if len(stack) == len(path) {
			return line
		}
		if len(stack) > bestDepth {
			best, bestDepth = line, len(stack)
		}
		return 0
	}
	for n, line := range strings.Split(string(data), "\n") {
		text := strings.TrimLeft(line, " ")
		if text == "" || text[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "---") {
			stack = stack[:0]
			continue
		}
		indent := len(line) - len(text)
		for text == "-" || strings.HasPrefix(text, "- ") {
			idx := 0
			for len(stack) > 0 {
				top := stack[len(stack)-1]
				if top.indent < indent || (top.indent == indent && top.item < 0) {
					break
				}
				if top.indent == indent {
					idx = top.item + 1
				}
				stack = stack[:len(stack)-1]
			}
			stack = append(stack, frame{indent, "[" + strconv.Itoa(idx) + "]", idx})
			if l := match(n + 1); l > 0 {
				return l
			}
			rest := strings.TrimLeft(text[1:], " ")
			indent += len(text) - len(rest)
			text = rest
		}
		key, ok := yamlKey(text)
		if !ok {
			continue
		}
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		stack = append(stack, frame{indent, key, -1})
		if l := match(n + 1); l > 0 {
			return l
		}
	}
	return best
}

// yamlKey returns the key of a "key: value" or "key:" line.
func yamlKey(text string) (string, bool) {
	if text == "" || strings.ContainsRune("{[\"'|>&*!%@`", rune(text[0])) {
		if len(text) > 0 && (text[0] == '"' || text[0] == '\'') {
			end := strings.IndexByte(text[1:], text[0])
			if end >= 0 && strings.HasPrefix(text[end+2:], ":") {
				return text[1 : end+1], true
			}
		}
		return "", false
	}
	i := strings.Index(text, ":")
	if i <= 0 || (i+1 < len(text) && text[i+1] != ' ' && text[i+1] != '\t') {
		return "", false
	}
	return strings.TrimSpace(text[:i]), true
}
