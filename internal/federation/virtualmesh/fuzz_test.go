package virtualmesh

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must not panic; every refusal
// is an *Error; and whatever it accepts holds at least one mesh, distinct
// trust domains, exactly one root source and a controller ID no member can
// issue. Seeds: the VirtualMesh files in testdata/ (the seeds' examples and
// their refused variants).
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed corpus in testdata: %v", err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(base))
	f.Fuzz(func(t *testing.T, data []byte) {
		vm, err := Parse("fuzz.yaml", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("refusal %v is a %T, not an *Error", err, err)
			}
			return
		}
		if len(vm.Meshes) == 0 {
			t.Fatal("accepted a VirtualMesh without meshes")
		}
		if (vm.Root.Generated == nil) == (vm.Root.Files == nil) {
			t.Fatalf("accepted root source %+v: want exactly one", vm.Root)
		}
		seen := map[string]bool{}
		id := vm.ControllerID()
		for _, m := range vm.Meshes {
			if seen[m.TrustDomain.Name()] {
				t.Fatalf("accepted trust domain %s twice", m.TrustDomain)
			}
			seen[m.TrustDomain.Name()] = true
			if id.MemberOf(m.TrustDomain) {
				t.Fatalf("controller ID %s is in member trust domain %s", id, m.TrustDomain)
			}
		}
	})
}
