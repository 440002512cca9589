package virtualmesh

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const day = 24 * time.Hour

func td(s string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(s) }

// Every example of the seeds, with meshfed's trustDomain added, is accepted
// and read exactly.
func TestLoadSeedExamples(t *testing.T) {
	cases := []struct {
		file string
		want VirtualMesh
	}{
		{"smh-v1alpha2.yaml", VirtualMesh{
			APIVersion: "networking.smh.solo.io/v1alpha2", Name: "virtual-mesh", Namespace: "service-mesh-hub",
			Root:           Root{Generated: &GeneratedRoot{TTL: 365 * day, KeyType: pki.ECP256}},
			FederationMode: "PERMISSIVE", AutoRestartPods: true,
			Meshes: []Mesh{
				{Name: "istiod-istio-system-kind2", Namespace: "service-mesh-hub", TrustDomain: td("kind2")},
				{Name: "istiod-istio-system-kind3", Namespace: "service-mesh-hub", TrustDomain: td("kind3")},
			},
		}},
		{"smh-v1alpha1.yaml", VirtualMesh{
			APIVersion: "networking.smh.solo.io/v1alpha1", Name: "virtual-mesh", Namespace: "service-mesh-hub",
			DisplayName:    "Demo Mesh Federation",
			Root:           Root{Generated: &GeneratedRoot{TTL: 356 * day, KeyType: pki.RSA4096, Organization: "service-mesh-hub"}},
			FederationMode: "PERMISSIVE",
			Meshes: []Mesh{
				{Name: "istio-istio-system-management-plane", Namespace: "service-mesh-hub", TrustDomain: td("management-plane.example"), Address: "127.0.0.1:8443"},
				{Name: "istio-istio-system-new-remote-cluster", Namespace: "service-mesh-hub", TrustDomain: td("remote-cluster.example"), Address: "127.0.0.1:8543"},
			},
		}},
		{"generated-v1alpha2.yaml", VirtualMesh{
			APIVersion: "networking.smh.solo.io/v1alpha2", Name: "virtual-mesh", Namespace: "service-mesh-hub",
			Root:           Root{Generated: &GeneratedRoot{TTL: 356 * day, KeyType: pki.RSA2048, Organization: "service-mesh-hub"}},
			FederationMode: "PERMISSIVE", EnforceAccessControl: true,
			Meshes: []Mesh{
				{Name: "east", Namespace: "service-mesh-hub", TrustDomain: td("east.example"), Address: "127.0.0.1:8443"},
				{Name: "west", Namespace: "service-mesh-hub", TrustDomain: td("west.example"), Address: "127.0.0.1:8543"},
			},
		}},
		{"files-gloo-v1.yaml", VirtualMesh{
			APIVersion: "networking.mesh.gloo.solo.io/v1", Name: "mesh.federation", Namespace: "gloo-mesh",
			Root:           Root{Files: &RootFiles{CertFile: filepath.Join("testdata", "root/root-cert.pem"), KeyFile: filepath.Join("testdata", "root/root-key.pem")}},
			FederationMode: "PERMISSIVE", EnforceAccessControl: true,
			Meshes: []Mesh{{Name: "east", TrustDomain: td("east.example")}, {Name: "west", TrustDomain: td("west.example")}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			got, err := Load(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("Load = %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

// The seeds' examples as written, and every setting meshfed cannot honour,
// are refused with the field, its line and the reason.
func TestLoadRefusesSeedExamplesAsWritten(t *testing.T) {
	cases := []struct{ file, want string }{
		{"seed-verbatim-v1alpha2.yaml", "virtualmesh: testdata/seed-verbatim-v1alpha2.yaml:14: spec.meshes[0].trustDomain: missing; meshfed needs each mesh's SPIFFE trust domain, e.g. trustDomain: east.example"},
		{"seed-secret-v1alpha1.yaml", "virtualmesh: testdata/seed-secret-v1alpha1.yaml:11: spec.certificateAuthority.provided: meshfed does not read Kubernetes secrets; give the root as PEM files: files: {rootCertFile: root-cert.pem, rootKeyFile: root-key.pem}"},
	}
	for _, tc := range cases {
		_, err := Load(filepath.Join("testdata", tc.file))
		if err == nil || err.Error() != tc.want {
			t.Errorf("Load(%s) = %v\nwant %s", tc.file, err, tc.want)
		}
	}
}

// base is a valid v1alpha2 VirtualMesh; the refusal cases edit it.
const base = `apiVersion: networking.smh.solo.io/v1alpha2
kind: VirtualMesh
metadata:
  name: virtual-mesh
spec:
  mtlsConfig:
    shared:
      rootCertificateAuthority:
        generated: {}
  meshes:
  - name: east
    trustDomain: east.example
  - name: west
    trustDomain: west.example
`

func TestParseRefusals(t *testing.T) {
	edit := func(old, new string) string {
		if !strings.Contains(base, old) {
			panic("base lacks " + old)
		}
		return strings.Replace(base, old, new, 1)
	}
	cases := []struct {
		name, yaml, want string
	}{
		{"empty", "", "virtualmesh: f.yaml: the file is empty; it should hold one VirtualMesh"},
		{"not a mapping", "- a\n", "virtualmesh: f.yaml: (document): want a mapping, got a list"},
		{"syntax", "kind: [VirtualMesh\n", "virtualmesh: f.yaml:1: did not find expected ',' or ']'"},
		{"duplicate key", base + "kind: VirtualMesh\n", `virtualmesh: f.yaml:15: key "kind" already set in map`},
		{"two documents", base + "---\n" + base, "virtualmesh: f.yaml:15: a second YAML document; give one VirtualMesh per file"},
		{"too large", base + "# " + strings.Repeat("x", MaxBytes) + "\n", "virtualmesh: f.yaml: the file is 524570 bytes; a VirtualMesh is at most 524288"},
		{"no apiVersion", edit("apiVersion: networking.smh.solo.io/v1alpha2\n", ""),
			"virtualmesh: f.yaml: apiVersion: missing; use one of networking.smh.solo.io/v1alpha1, networking.smh.solo.io/v1alpha2, networking.mesh.gloo.solo.io/v1"},
		{"unknown apiVersion", edit("v1alpha2", "v1beta1"),
			`virtualmesh: f.yaml:1: apiVersion: "networking.smh.solo.io/v1beta1" is not a VirtualMesh version meshfed reads; use one of networking.smh.solo.io/v1alpha1, networking.smh.solo.io/v1alpha2, networking.mesh.gloo.solo.io/v1`},
		{"other kind", edit("kind: VirtualMesh", "kind: TrafficPolicy"),
			`virtualmesh: f.yaml:2: kind: "TrafficPolicy" is not VirtualMesh; meshfed federation reads a VirtualMesh`},
		{"unknown top-level field", base + "status: {}\n", "virtualmesh: f.yaml:15: status: unknown field; the fields here are apiVersion, kind, metadata, spec"},
		{"unknown nested field", edit("        generated: {}", "        generated: {}\n        intermediate: {}"),
			"virtualmesh: f.yaml:10: spec.mtlsConfig.shared.rootCertificateAuthority.intermediate: unknown field; the fields here are files, generated, secret"},
		{"unknown field in flow style", edit("generated: {}", "generated: {ttl: 3}"),
			"virtualmesh: f.yaml:9: spec.mtlsConfig.shared.rootCertificateAuthority.generated.ttl: unknown field; the fields here are orgName, rsaKeySizeBytes, ttlDays"},
		{"wrong case", edit("mtlsConfig", "MTLSConfig"),
			`virtualmesh: f.yaml:6: spec.MTLSConfig: unknown field; did you mean "mtlsConfig"? (field names are case-sensitive)`},
		{"unknown mesh field", edit("  - name: west\n", "  - name: west\n    cluster: kind3\n"),
			"virtualmesh: f.yaml:14: spec.meshes[1].cluster: unknown field; the fields here are address, name, namespace, trustDomain"},
		{"wrong type", edit("trustDomain: west.example", "trustDomain: [west]"),
			"virtualmesh: f.yaml:14: spec.meshes[1].trustDomain: want a string, got a list; quote it"},
		{"bool as string", base + "  enforceAccessControl: \"yes\"\n",
			`virtualmesh: f.yaml:15: spec.enforceAccessControl: want true or false, got the string "yes"`},
		{"ttl not a number", edit("generated: {}", "generated: {ttlDays: 1.5}"),
			"virtualmesh: f.yaml:9: spec.mtlsConfig.shared.rootCertificateAuthority.generated.ttlDays: want a whole number, got 1.5"},
		{"no name", edit("  name: virtual-mesh\n", "  namespace: x\n"),
			"virtualmesh: f.yaml:3: metadata.name: missing; the VirtualMesh's name is the trust domain of the controller's SPIFFE ID"},
		{"name not a trust domain", edit("name: virtual-mesh", "name: Virtual_Mesh"),
			`virtualmesh: f.yaml:4: metadata.name: "Virtual_Mesh" cannot be a trust domain name (lower-case letters, digits, '.', '-', '_'); the controller's SPIFFE ID is spiffe://<metadata.name>/meshfed/federation-controller`},
		{"name is a member", edit("name: virtual-mesh", "name: west.example"),
			`virtualmesh: f.yaml:14: spec.meshes[1].trustDomain: "west.example" would let that member issue the controller's SPIFFE ID spiffe://west.example/meshfed/federation-controller; rename the VirtualMesh (metadata.name) or the trust domain`},
		{"name under a member", edit("name: virtual-mesh", "name: ctl.east.example"),
			`virtualmesh: f.yaml:12: spec.meshes[0].trustDomain: "east.example" would let that member issue the controller's SPIFFE ID spiffe://ctl.east.example/meshfed/federation-controller; rename the VirtualMesh (metadata.name) or the trust domain`},
		{"no meshes", strings.Split(base, "  meshes:")[0], "virtualmesh: f.yaml:5: spec.meshes: no meshes; list each member with its trustDomain"},
		{"mesh without name", edit("  - name: west\n", "  - namespace: x\n"),
			"virtualmesh: f.yaml:13: spec.meshes[1].name: missing"},
		{"duplicate mesh", edit("name: west", "name: east"), `virtualmesh: f.yaml:13: spec.meshes[1].name: "east" is also spec.meshes[0]`},
		{"duplicate trust domain", edit("west.example", "east.example"),
			`virtualmesh: f.yaml:14: spec.meshes[1].trustDomain: "east.example" is also the trust domain of spec.meshes[0]; each mesh needs its own`},
		{"nested trust domains", edit("west.example", "x.east.example"),
			`virtualmesh: f.yaml:14: spec.meshes[1].trustDomain: "x.east.example" and spec.meshes[0]'s "east.example" nest (one is a subdomain of the other); Go verifiers let the parent's name constraint admit the child's IDs, so give members trust domains that do not nest`},
		{"trust domain as ID", edit("west.example", "spiffe://west.example"),
			`virtualmesh: f.yaml:14: spec.meshes[1].trustDomain: "spiffe://west.example" is not a trust domain name: lower-case letters, digits, '.', '-' and '_', without spiffe://`},
		{"generated and files", edit("generated: {}", "generated: {}\n        files: {rootCertFile: a, rootKeyFile: b}"),
			"virtualmesh: f.yaml:10: spec.mtlsConfig.shared.rootCertificateAuthority.files: spec.mtlsConfig.shared.rootCertificateAuthority.generated is given too; a root comes from one source"},
		{"secret", edit("generated: {}", "secret: {name: root-ca-name, namespace: root-ca-namespace}"),
			"virtualmesh: f.yaml:9: spec.mtlsConfig.shared.rootCertificateAuthority.secret: meshfed does not read Kubernetes secrets; give the root as PEM files: files: {rootCertFile: root-cert.pem, rootKeyFile: root-key.pem}"},
		{"files without key", edit("generated: {}", "files:\n          rootCertFile: root.pem"),
			"virtualmesh: f.yaml:9: spec.mtlsConfig.shared.rootCertificateAuthority.files.rootKeyFile: missing; the PEM file of the root's private key"},
		{"rsa bytes", edit("generated: {}", "generated: {rsaKeySizeBytes: 512}"),
			"virtualmesh: f.yaml:9: spec.mtlsConfig.shared.rootCertificateAuthority.generated.rsaKeySizeBytes: 512 is not an RSA key size meshfed makes; despite its name the field counts bits: use 2048, 3072 or 4096"},
		{"ttl zero", edit("generated: {}", "generated:\n          ttlDays: 0"),
			"virtualmesh: f.yaml:10: spec.mtlsConfig.shared.rootCertificateAuthority.generated.ttlDays: 0; use 1 to 36500 days"},
		{"both spellings of the CA", base + "  certificateAuthority:\n    builtin: {}\n",
			"virtualmesh: f.yaml:15: spec.certificateAuthority: spec.mtlsConfig is given too; certificateAuthority is the v1alpha1 spelling of mtlsConfig.shared.rootCertificateAuthority: use one"},
		{"both spellings of shared", base + "  shared: {}\n",
			"virtualmesh: f.yaml:15: spec.shared: spec.mtlsConfig is given too; spec.shared is the v1alpha1 spelling of mtlsConfig.shared: use one"},
		{"limited v1alpha2", edit("    shared:\n      rootCertificateAuthority:\n        generated: {}\n", "    limited: {}\n"),
			"virtualmesh: f.yaml:7: spec.mtlsConfig.limited: limited trust is not supported: meshfed's VirtualMesh gives every member an intermediate under one shared root; use shared"},
		{"limited v1alpha1", edit("  mtlsConfig:\n    shared:\n      rootCertificateAuthority:\n        generated: {}\n", "  limited: {}\n"),
			"virtualmesh: f.yaml:6: spec.limited: limited trust is not supported: meshfed's VirtualMesh gives every member an intermediate under one shared root; use shared"},
		{"shared and limited", edit("  mtlsConfig:\n    shared:\n      rootCertificateAuthority:\n        generated: {}\n", "  shared: {}\n  limited: {}\n"),
			"virtualmesh: f.yaml:7: spec.limited: spec.shared is given too; a VirtualMesh has one trust model"},
		{"builtin and provided", edit("  mtlsConfig:\n    shared:\n      rootCertificateAuthority:\n        generated: {}\n", "  certificateAuthority:\n    builtin: {}\n    provided: {certificate: {name: x}}\n"),
			"virtualmesh: f.yaml:8: spec.certificateAuthority.provided: spec.certificateAuthority.builtin is given too; a root comes from one source"},
		{"federation mode", base + "  federation: {mode: STRICT}\n",
			`virtualmesh: f.yaml:15: spec.federation.mode: "STRICT" is not supported; meshfed federates every service of every member: use PERMISSIVE or leave it out`},
		{"access policy", base + "  globalAccessPolicy: SOMETIMES\n",
			`virtualmesh: f.yaml:15: spec.globalAccessPolicy: "SOMETIMES"; use ENABLED, DISABLED or MESH_DEFAULT`},
		{"contradictory access control", base + "  globalAccessPolicy: ENABLED\n  enforceAccessControl: false\n",
			"virtualmesh: f.yaml:15: spec.globalAccessPolicy: ENABLED contradicts spec.enforceAccessControl: false; give one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := Parse("f.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", vm)
			}
			if err.Error() != tc.want {
				t.Errorf("Parse error\n got %s\nwant %s", err, tc.want)
			}
		})
	}
}

// A few accepted variations beside the seeds.
func TestParseAccepts(t *testing.T) {
	cases := []struct {
		name, yaml string
		check      func(*VirtualMesh) bool
	}{
		{"no mtlsConfig at all: a generated root with defaults", strings.Replace(base, "  mtlsConfig:\n    shared:\n      rootCertificateAuthority:\n        generated: {}\n", "", 1),
			func(vm *VirtualMesh) bool {
				return *vm.Root.Generated == GeneratedRoot{TTL: DefaultRootTTL, KeyType: pki.ECP256}
			}},
		{"globalAccessPolicy agrees", base + "  globalAccessPolicy: DISABLED\n  enforceAccessControl: false\n",
			func(vm *VirtualMesh) bool { return !vm.EnforceAccessControl }},
		{"labels and annotations", strings.Replace(base, "  name: virtual-mesh\n", "  name: virtual-mesh\n  labels: {app: meshfed}\n  annotations: {note: \"x\"}\n", 1),
			func(vm *VirtualMesh) bool { return vm.Name == "virtual-mesh" }},
		{"v1alpha1 files", strings.Replace(base, "  mtlsConfig:\n    shared:\n      rootCertificateAuthority:\n        generated: {}\n", "  certificateAuthority:\n    files: {rootCertFile: /etc/root.pem, rootKeyFile: /etc/root.key}\n", 1),
			func(vm *VirtualMesh) bool {
				return *vm.Root.Files == RootFiles{CertFile: "/etc/root.pem", KeyFile: "/etc/root.key"}
			}},
		{"leading document marker and comments", "# a VirtualMesh\n---\n" + base,
			func(vm *VirtualMesh) bool { return len(vm.Meshes) == 2 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := Parse("f.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(vm) {
				t.Errorf("Parse = %+v", vm)
			}
		})
	}
}

func TestControllerIDAndLookups(t *testing.T) {
	vm, err := Parse("f.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if got := vm.ControllerID().String(); got != "spiffe://virtual-mesh/meshfed/federation-controller" {
		t.Errorf("ControllerID = %s", got)
	}
	if got := vm.TrustDomains(); !reflect.DeepEqual(got, []spiffeid.TrustDomain{td("east.example"), td("west.example")}) {
		t.Errorf("TrustDomains = %v", got)
	}
	if m, ok := vm.Mesh(td("west.example")); !ok || m.Name != "west" {
		t.Errorf("Mesh(west) = %+v, %v", m, ok)
	}
	if _, ok := vm.Mesh(td("north.example")); ok {
		t.Error("Mesh(north) found")
	}
}

func TestLoadBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, make([]byte, MaxBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "input exceeds size limit") {
		t.Errorf("Load(too large) = %v", err)
	}
}

func TestLineOf(t *testing.T) {
	doc := "a:\n  b: 1\n  c:\n  - d: 1\n    e: 2\n  - d: 3\n    # comment\n    e: 4\nf: {g: 1}\n"
	cases := []struct {
		path string
		want int
	}{
		{"a", 1}, {"a.b", 2}, {"a.c", 3}, {"a.c[0]", 4}, {"a.c[0].e", 5}, {"a.c[1].d", 6}, {"a.c[1].e", 8},
		{"f", 9}, {"f.g", 9}, {"a.c[2].d", 3}, {"x", 0},
	}
	for _, tc := range cases {
		if got := lineOf([]byte(doc), splitPath(tc.path)); got != tc.want {
			t.Errorf("lineOf(%s) = %d, want %d", tc.path, got, tc.want)
		}
	}
}
