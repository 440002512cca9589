package controller

import (
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/meshfed/meshfed/internal/federation/virtualmesh"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/supervise"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// mesh is the VirtualMesh in use.
func (c *Controller) mesh() *virtualmesh.VirtualMesh { return c.vm.Load() }

func trustDomainNames(vm *virtualmesh.VirtualMesh) []string {
	var out []string
	for _, td := range vm.TrustDomains() {
		out = append(out, td.Name())
	}
	return out
}

// inMesh reports whether the trust domain named td is in vm's spec.meshes.
func inMesh(vm *virtualmesh.VirtualMesh, td string) bool {
	t, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return false
	}
	_, ok := vm.Mesh(t)
	return ok
}

// addMemberHint says how a trust domain becomes a member.
func (c *Controller) addMemberHint() string {
	if c.cfg.MeshFile == "" {
		return "add it to spec.meshes and restart the controller"
	}
	return fmt.Sprintf("add it to spec.meshes in %s (read again within %s)", c.cfg.MeshFile, c.cfg.ReloadInterval)
}

// follow makes next what vm says: a member that left spec.meshes loses its
// record (it can no longer call, and joining again takes a new token) and
// the join tokens made for it, and the member trust domains and the access
// control sent to members follow the file, with a new generation. It reports
// whether next changed. c.mu must be held.
func (c *Controller) follow(next *state, vm *virtualmesh.VirtualMesh) bool {
	changed := false
	for _, td := range slices.Sorted(maps.Keys(next.Members)) {
		if !inMesh(vm, td) {
			c.log.Warn("member left spec.meshes; its record is dropped and it can no longer call", "trust_domain", td)
			delete(next.Members, td)
			changed = true
		}
	}
	kept := next.Tokens[:0:0]
	for _, tok := range next.Tokens {
		if inMesh(vm, tok.TrustDomain) || !tok.UsedAt.IsZero() {
			kept = append(kept, tok)
		} else {
			changed = true
		}
	}
	next.Tokens = kept
	if tds := trustDomainNames(vm); !slices.Equal(tds, next.TrustDomains) || next.EnforceAccessControl != vm.EnforceAccessControl {
		next.TrustDomains = tds
		next.EnforceAccessControl = vm.EnforceAccessControl
		next.bump()
		changed = true
	}
	return changed
}

// ReloadMesh reads MeshFile again and, if its content changed since it was
// last read, applies it as a restart would, without one: members added to
// spec.meshes may be given tokens, members removed are refused from their
// next call on (an open Watch stream ends at once), every other member is
// sent the new member trust domains, and the generated-root settings apply
// to the next root a rotation makes. A file that does not parse, or that
// renames the VirtualMesh, is refused with one log line and changes
// nothing. It reports whether the VirtualMesh in use changed. Run calls it
// every ReloadInterval.
func (c *Controller) ReloadMesh() (bool, error) {
	path := c.cfg.MeshFile
	if path == "" {
		return false, nil
	}
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	data, err := pemfile.ReadFile(path, virtualmesh.MaxBytes)
	if err != nil {
		// A file being replaced may be missing for a moment; say so once.
		return false, c.refuseMesh(sha256.Sum256([]byte("unreadable: "+err.Error())), err)
	}
	digest := sha256.Sum256(data)
	if digest == c.meshSeen {
		return false, c.meshErr
	}
	vm, err := virtualmesh.ParseFile(path, data)
	if err != nil {
		return false, c.refuseMesh(digest, err)
	}
	if vm.Name != c.name {
		return false, c.refuseMesh(digest, fmt.Errorf("metadata.name changed from %q to %q: a controller serves one VirtualMesh, whose name is its SPIFFE trust domain; put the name back, or run another controller with its own --data-dir", c.name, vm.Name))
	}
	c.meshSeen, c.meshErr = digest, nil
	c.refused.Store(nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.mesh()
	gen := c.st.Generation
	if err := c.update(func(next *state) error {
		if !c.follow(next, vm) {
			return errNoChange
		}
		return nil
	}); err != nil {
		// Not saved: nothing changed, and the next poll tries again.
		c.meshSeen = [sha256.Size]byte{}
		c.log.Error("VirtualMesh reload not saved; the one in use stays and the file is read again", "file", path, "error", err)
		return false, err
	}
	c.vm.Store(vm)
	added, removed := diffMembers(old, vm)
	c.log.Info("VirtualMesh reloaded", "file", path, "members", strings.Join(trustDomainNames(vm), ","),
		"added", strings.Join(added, ","), "removed", strings.Join(removed, ","),
		"enforce_access_control", vm.EnforceAccessControl, "generation", c.st.Generation, "members_told", c.st.Generation != gen)
	for _, td := range added {
		c.log.Info("member added to spec.meshes; it joins with a token from 'meshfed federation token create --trust-domain TD'", "trust_domain", td)
	}
	if !reflect.DeepEqual(old.Root, vm.Root) {
		c.log.Info("the VirtualMesh's root settings changed: the roots in use stay, and the next root a rotation makes follows the new settings", "file", path)
	}
	return true, nil
}

// refuseMesh logs a refused VirtualMesh file once per content.
func (c *Controller) refuseMesh(digest [sha256.Size]byte, err error) error {
	if digest != c.meshSeen {
		c.meshSeen, c.meshErr = digest, err
		msg := err.Error()
		c.refused.Store(&msg)
		c.log.Error("VirtualMesh reload refused; the one in use stays", "file", c.cfg.MeshFile, "error", err)
	}
	return err
}

// diffMembers lists the trust domains of spec.meshes added and removed from
// a to b.
func diffMembers(a, b *virtualmesh.VirtualMesh) (added, removed []string) {
	for _, td := range b.TrustDomains() {
		if _, ok := a.Mesh(td); !ok {
			added = append(added, td.Name())
		}
	}
	for _, td := range a.TrustDomains() {
		if _, ok := b.Mesh(td); !ok {
			removed = append(removed, td.Name())
		}
	}
	return added, removed
}

// watchMesh calls ReloadMesh every ReloadInterval until ctx is done.
func (c *Controller) watchMesh(ctx context.Context) error {
	return supervise.Every(ctx, c.cfg.ReloadInterval, func() { _, _ = c.ReloadMesh() })
}
