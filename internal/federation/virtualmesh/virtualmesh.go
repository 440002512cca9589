// Package virtualmesh reads the VirtualMesh resource that `meshfed
// federation run` is configured with: the YAML users know from Service Mesh
// Hub and Gloo Mesh (networking.smh.solo.io/v1alpha1 and v1alpha2,
// networking.mesh.gloo.solo.io/v1), plus the two fields meshfed needs on each
// mesh, its SPIFFE trust domain and, for status, its address.
//
// Parsing is strict: an unknown field (matched case-sensitively), a value of
// the wrong type, two spellings of one setting, or a setting meshfed cannot
// honour (a root in a Kubernetes secret, limited trust, a federation mode
// other than PERMISSIVE) is an *Error naming the field and, when the file is
// written in block style, its line. The input is bounded by MaxBytes.
//
// The package only reads: it never reads the root's files, makes a key or
// touches the network.
package virtualmesh

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxBytes bounds a VirtualMesh file. A resource listing a thousand meshes
// is under 200 KiB; the YAML decoder's cost grows with its input.
const MaxBytes = 512 << 10

// MaxMeshes bounds spec.meshes.
const MaxMeshes = 1000

// APIVersions are the apiVersions accepted, oldest first. The fields of every version are
// accepted under any of them; two spellings of one setting in one file are
// refused.
var APIVersions = []string{
	"networking.smh.solo.io/v1alpha1",
	"networking.smh.solo.io/v1alpha2",
	"networking.mesh.gloo.solo.io/v1",
}

// Kind is the only kind accepted.
const Kind = "VirtualMesh"

// DefaultRootTTL is the lifetime of a generated root when ttlDays is not
// given: Service Mesh Hub's default, 365 days.
const DefaultRootTTL = 365 * 24 * time.Hour

// maxTTLDays bounds ttlDays: a century.
const maxTTLDays = 36500

// ControllerPath is the path of the SPIFFE ID the controller serves with;
// its trust domain is the VirtualMesh's metadata.name (ControllerID).
const ControllerPath = "/meshfed/federation-controller"

// VirtualMesh is a parsed, validated VirtualMesh resource.
type VirtualMesh struct {
	APIVersion  string
	Name        string // metadata.name
	Namespace   string // metadata.namespace, informational
	DisplayName string // spec.displayName (v1alpha1), informational
	Root        Root
	// FederationMode is "PERMISSIVE", the only mode meshfed implements.
	FederationMode string
	// EnforceAccessControl is spec.enforceAccessControl (or
	// spec.globalAccessPolicy: ENABLED): cross-mesh traffic is denied unless
	// a policy allows it. Members receive it in their federation state.
	EnforceAccessControl bool
	// AutoRestartPods is accepted and has no effect: meshfed's servers and
	// agents pick up new intermediates and roots without restarts.
	AutoRestartPods bool
	Meshes          []Mesh
}

// Root says where the shared root comes from. Exactly one field is set.
type Root struct {
	Generated *GeneratedRoot
	Files     *RootFiles
}

// GeneratedRoot is a root the controller makes, and the template of every
// root a rotation makes.
type GeneratedRoot struct {
	TTL          time.Duration
	KeyType      pki.KeyType // ECDSA P-256 unless rsaKeySizeBytes says otherwise
	Organization string      // subject O; pki's default ("meshfed") if empty
}

// RootFiles is an existing root given as PEM files. Load makes relative
// paths relative to the VirtualMesh file's directory.
type RootFiles struct {
	CertFile string
	KeyFile  string
}

// Mesh is one member of the VirtualMesh: a meshfed server and its trust
// domain.
type Mesh struct {
	Name        string
	Namespace   string
	TrustDomain spiffeid.TrustDomain
	Address     string // informational
}

// TrustDomains returns the member trust domains in the order of spec.meshes.
func (vm *VirtualMesh) TrustDomains() []spiffeid.TrustDomain {
	tds := make([]spiffeid.TrustDomain, len(vm.Meshes))
	for i, m := range vm.Meshes {
		tds[i] = m.TrustDomain
	}
	return tds
}

// Mesh returns the member with trust domain td.
func (vm *VirtualMesh) Mesh(td spiffeid.TrustDomain) (Mesh, bool) {
	for _, m := range vm.Meshes {
		if m.TrustDomain == td {
			return m, true
		}
	}
	return Mesh{}, false
}

// ControllerID is the SPIFFE ID of the controller's serving certificate:
// spiffe://<metadata.name>/meshfed/federation-controller. Parse refuses a
// name that is, or lies under, a member trust domain, so that no member's
// name-constrained intermediate can issue this ID.
func (vm *VirtualMesh) ControllerID() spiffeid.ID {
	return spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(vm.Name), ControllerPath)
}

// Load reads and parses a VirtualMesh file. Relative root file paths are
// resolved against the file's directory.
func Load(path string) (*VirtualMesh, error) {
	data, err := pemfile.ReadFile(path, MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("virtualmesh: %w", err)
	}
	return ParseFile(path, data)
}

// ParseFile parses data read from path, as Load does: relative root file
// paths are resolved against path's directory.
func ParseFile(path string, data []byte) (*VirtualMesh, error) {
	vm, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	if f := vm.Root.Files; f != nil {
		dir := filepath.Dir(path)
		for _, p := range []*string{&f.CertFile, &f.KeyFile} {
			if !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
	}
	return vm, nil
}

// Parse parses and validates a VirtualMesh; name is the file name used in
// errors.
func Parse(name string, data []byte) (*VirtualMesh, error) {
	p := &parser{file: name, data: data}
	if len(data) > MaxBytes {
		return nil, p.errorf("", "the file is %d bytes; a VirtualMesh is at most %d", len(data), MaxBytes)
	}
	raw, err := p.decode()
	if err != nil {
		return nil, err
	}
	return p.validate(raw)
}

// validate turns the decoded resource into a VirtualMesh, refusing what
// meshfed cannot honour.
func (p *parser) validate(raw *rawVirtualMesh) (*VirtualMesh, error) {
	if !slices.Contains(APIVersions, raw.APIVersion) {
		if raw.APIVersion == "" {
			return nil, p.errorf("apiVersion", "missing; use one of %s", strings.Join(APIVersions, ", "))
		}
		return nil, p.errorf("apiVersion", "%q is not a VirtualMesh version meshfed reads; use one of %s", raw.APIVersion, strings.Join(APIVersions, ", "))
	}
	if raw.Kind != Kind {
		return nil, p.errorf("kind", "%q is not %s; meshfed federation reads a VirtualMesh", raw.Kind, Kind)
	}
	vm := &VirtualMesh{
		APIVersion:     raw.APIVersion,
		Name:           raw.Metadata.Name,
		Namespace:      raw.Metadata.Namespace,
		DisplayName:    raw.Spec.DisplayName,
		FederationMode: "PERMISSIVE",
	}
	spec := &raw.Spec
	if err := p.meshes(vm, spec.Meshes); err != nil {
		return nil, err
	}
	if err := p.name(vm); err != nil {
		return nil, err
	}
	if err := p.trustModel(vm, spec); err != nil {
		return nil, err
	}
	if f := spec.Federation; f != nil && f.Mode != "" && f.Mode != "PERMISSIVE" {
		return nil, p.errorf("spec.federation.mode", "%q is not supported; meshfed federates every service of every member: use PERMISSIVE or leave it out", f.Mode)
	}
	if err := p.accessControl(vm, spec); err != nil {
		return nil, err
	}
	return vm, nil
}

// name checks metadata.name, which names the controller's trust domain.
func (p *parser) name(vm *VirtualMesh) error {
	if vm.Name == "" {
		return p.errorf("metadata.name", "missing; the VirtualMesh's name is the trust domain of the controller's SPIFFE ID")
	}
	td, err := spiffeid.TrustDomainFromString(vm.Name)
	if err != nil || td.Name() != vm.Name {
		return p.errorf("metadata.name", "%q cannot be a trust domain name (lower-case letters, digits, '.', '-', '_'); the controller's SPIFFE ID is spiffe://<metadata.name>%s", vm.Name, ControllerPath)
	}
	for i, m := range vm.Meshes {
		member := m.TrustDomain.Name()
		if vm.Name == member || strings.HasSuffix(vm.Name, "."+member) {
			return p.errorf(fmt.Sprintf("spec.meshes[%d].trustDomain", i),
				"%q would let that member issue the controller's SPIFFE ID spiffe://%s%s; rename the VirtualMesh (metadata.name) or the trust domain", member, vm.Name, ControllerPath)
		}
	}
	return nil
}

func (p *parser) meshes(vm *VirtualMesh, meshes []rawMesh) error {
	if len(meshes) == 0 {
		return p.errorf("spec.meshes", "no meshes; list each member with its trustDomain")
	}
	if len(meshes) > MaxMeshes {
		return p.errorf("spec.meshes", "%d meshes; at most %d", len(meshes), MaxMeshes)
	}
	names := map[string]int{}
	tds := map[spiffeid.TrustDomain]int{}
	for i, m := range meshes {
		at := func(f string) string { return fmt.Sprintf("spec.meshes[%d].%s", i, f) }
		if m.Name == "" {
			return p.errorf(at("name"), "missing")
		}
		key := m.Namespace + "/" + m.Name
		if j, dup := names[key]; dup {
			return p.errorf(at("name"), "%q is also spec.meshes[%d]", m.Name, j)
		}
		names[key] = i
		if m.TrustDomain == "" {
			return p.errorf(at("trustDomain"), "missing; meshfed needs each mesh's SPIFFE trust domain, e.g. trustDomain: east.example")
		}
		td, err := spiffeid.TrustDomainFromString(m.TrustDomain)
		if err != nil || td.Name() != m.TrustDomain {
			return p.errorf(at("trustDomain"), "%q is not a trust domain name: lower-case letters, digits, '.', '-' and '_', without spiffe://", m.TrustDomain)
		}
		if j, dup := tds[td]; dup {
			return p.errorf(at("trustDomain"), "%q is also the trust domain of spec.meshes[%d]; each mesh needs its own", m.TrustDomain, j)
		}
		// Go's crypto/x509 (so go-spiffe, and every Go workload) lets a URI
		// name constraint for east.example admit spiffe://x.east.example:
		// one member's intermediate could then sign the other's IDs.
		for other, j := range tds {
			if strings.HasSuffix(td.Name(), "."+other.Name()) || strings.HasSuffix(other.Name(), "."+td.Name()) {
				return p.errorf(at("trustDomain"), "%q and spec.meshes[%d]'s %q nest (one is a subdomain of the other); Go verifiers let the parent's name constraint admit the child's IDs, so give members trust domains that do not nest", m.TrustDomain, j, other.Name())
			}
		}
		tds[td] = i
		vm.Meshes = append(vm.Meshes, Mesh{Name: m.Name, Namespace: m.Namespace, TrustDomain: td, Address: m.Address})
	}
	return nil
}

// trustModel reads the root's source and the trust model from either
// spelling: v1alpha1's certificateAuthority and shared/limited, or
// v1alpha2's mtlsConfig.
func (p *parser) trustModel(vm *VirtualMesh, spec *rawSpec) error {
	if spec.MTLSConfig != nil && spec.CertificateAuthority != nil {
		return p.errorf("spec.certificateAuthority", "spec.mtlsConfig is given too; certificateAuthority is the v1alpha1 spelling of mtlsConfig.shared.rootCertificateAuthority: use one")
	}
	if spec.MTLSConfig != nil && spec.Shared != nil {
		return p.errorf("spec.shared", "spec.mtlsConfig is given too; spec.shared is the v1alpha1 spelling of mtlsConfig.shared: use one")
	}
	if spec.Limited != nil {
		if spec.Shared != nil {
			return p.errorf("spec.limited", "spec.shared is given too; a VirtualMesh has one trust model")
		}
		return p.errorf("spec.limited", "limited trust is not supported: meshfed's VirtualMesh gives every member an intermediate under one shared root; use shared")
	}
	if m := spec.MTLSConfig; m != nil {
		vm.AutoRestartPods = m.AutoRestartPods
		if m.Limited != nil {
			if m.Shared != nil {
				return p.errorf("spec.mtlsConfig.limited", "spec.mtlsConfig.shared is given too; a VirtualMesh has one trust model")
			}
			return p.errorf("spec.mtlsConfig.limited", "limited trust is not supported: meshfed's VirtualMesh gives every member an intermediate under one shared root; use shared")
		}
		if m.Shared != nil && m.Shared.RootCertificateAuthority != nil {
			return p.rootCA("spec.mtlsConfig.shared.rootCertificateAuthority", "generated", vm,
				m.Shared.RootCertificateAuthority.Generated, m.Shared.RootCertificateAuthority.Files, m.Shared.RootCertificateAuthority.Secret != nil)
		}
	}
	if ca := spec.CertificateAuthority; ca != nil {
		secret := ca.Provided != nil
		return p.rootCA("spec.certificateAuthority", "builtin", vm, ca.Builtin, ca.Files, secret)
	}
	vm.Root.Generated = &GeneratedRoot{TTL: DefaultRootTTL, KeyType: pki.DefaultKeyType}
	return nil
}

// rootCA reads one root source at path: generated (named gen in this
// spelling), files, or a Kubernetes secret (refused).
func (p *parser) rootCA(path, gen string, vm *VirtualMesh, g *rawGenerated, f *rawRootFiles, secret bool) error {
	secretField := "secret"
	if gen == "builtin" {
		secretField = "provided"
	}
	var given []string
	if g != nil {
		given = append(given, gen)
	}
	if f != nil {
		given = append(given, "files")
	}
	if secret {
		given = append(given, secretField)
	}
	if len(given) > 1 {
		return p.errorf(path+"."+given[1], "%s.%s is given too; a root comes from one source", path, given[0])
	}
	switch {
	case secret:
		return p.errorf(path+"."+secretField, "meshfed does not read Kubernetes secrets; give the root as PEM files: files: {rootCertFile: root-cert.pem, rootKeyFile: root-key.pem}")
	case f != nil:
		if f.RootCertFile == "" {
			return p.errorf(path+".files.rootCertFile", "missing; the PEM file of the root certificate")
		}
		if f.RootKeyFile == "" {
			return p.errorf(path+".files.rootKeyFile", "missing; the PEM file of the root's private key")
		}
		vm.Root.Files = &RootFiles{CertFile: f.RootCertFile, KeyFile: f.RootKeyFile}
		return nil
	}
	root := &GeneratedRoot{TTL: DefaultRootTTL, KeyType: pki.DefaultKeyType}
	if g != nil {
		if g.TTLDays != nil {
			if d := *g.TTLDays; d < 1 || d > maxTTLDays {
				return p.errorf(path+"."+gen+".ttlDays", "%d; use 1 to %d days", d, maxTTLDays)
			}
			root.TTL = time.Duration(*g.TTLDays) * 24 * time.Hour
		}
		if g.RSAKeySizeBytes != nil {
			kt, err := pki.RSAKeyType(*g.RSAKeySizeBytes)
			if err != nil {
				return p.errorf(path+"."+gen+".rsaKeySizeBytes", "%d is not an RSA key size meshfed makes; despite its name the field counts bits: use 2048, 3072 or 4096", *g.RSAKeySizeBytes)
			}
			root.KeyType = kt
		}
		root.Organization = g.OrgName
	}
	vm.Root.Generated = root
	return nil
}

// accessControl reads enforceAccessControl or its v1alpha2 spelling,
// globalAccessPolicy.
func (p *parser) accessControl(vm *VirtualMesh, spec *rawSpec) error {
	var fromPolicy *bool
	switch spec.GlobalAccessPolicy {
	case "":
	case "ENABLED":
		fromPolicy = new(true)
	case "DISABLED", "MESH_DEFAULT":
		fromPolicy = new(false)
	default:
		return p.errorf("spec.globalAccessPolicy", "%q; use ENABLED, DISABLED or MESH_DEFAULT", spec.GlobalAccessPolicy)
	}
	switch {
	case fromPolicy != nil && spec.EnforceAccessControl != nil && *fromPolicy != *spec.EnforceAccessControl:
		return p.errorf("spec.globalAccessPolicy", "%s contradicts spec.enforceAccessControl: %t; give one", spec.GlobalAccessPolicy, *spec.EnforceAccessControl)
	case spec.EnforceAccessControl != nil:
		vm.EnforceAccessControl = *spec.EnforceAccessControl
	case fromPolicy != nil:
		vm.EnforceAccessControl = *fromPolicy
	}
	return nil
}
