package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/supervise"
)

// DefaultPolicyPoll is how often a PolicyLoader looks for changes in its
// directory.
const DefaultPolicyPoll = time.Second

// PolicyLoader keeps a Sidecar's policy current from two sources: a local
// directory of Istio YAML, re-read when a file in it changes, and the
// documents the trust domain's server pushes through the agent. Both are
// combined into one policy.Set. A combination that does not build (a bad
// document, two documents with one kind, namespace and name) is refused,
// with the file and line of the fault in the log and the metrics, and the
// last good set stays in force.
type PolicyLoader struct {
	s       *Sidecar
	dir     string
	opts    []policy.Option
	fetcher policy.JWKSFetcher
	log     *slog.Logger

	mu          sync.Mutex
	local       []policy.Document
	pushed      []policy.Document
	pushedRev   int64
	fingerprint string
}

// NewPolicyLoader returns a loader that puts its sets in force on s. dir
// may be empty (server policies only). fetcher gets the key sets of
// jwksUri rules (a policy.JWKSCache); it is kept across reloads.
func NewPolicyLoader(s *Sidecar, dir string, fetcher policy.JWKSFetcher, opts ...policy.Option) *PolicyLoader {
	return &PolicyLoader{s: s, dir: dir, opts: opts, fetcher: fetcher, log: s.log, fingerprint: "(not read)"}
}

// ReloadDir re-reads the directory if a policy file in it was added,
// removed or changed since the last call, and puts the new set in force.
// It reports whether it read the directory; an error leaves the set in
// force unchanged.
func (p *PolicyLoader) ReloadDir() (bool, error) {
	if p.dir == "" {
		return false, nil
	}
	fp, err := dirFingerprint(p.dir)
	if err != nil {
		p.s.metrics.policyLoads.WithLabelValues("dir", "error").Inc()
		return false, fmt.Errorf("proxy: policies: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if fp == p.fingerprint {
		return false, nil
	}
	docs, err := policy.ReadDir(p.dir, append([]policy.Option{policy.SkipOtherKinds()}, p.opts...)...)
	if err == nil {
		err = p.apply(docs, p.pushed)
	}
	p.fingerprint = fp // a broken file is reported once, not every poll
	if err != nil {
		p.s.metrics.policyLoads.WithLabelValues("dir", "error").Inc()
		return true, fmt.Errorf("proxy: policies from %s refused, the last good set stays in force: %w", p.dir, err)
	}
	p.local = docs
	p.s.metrics.policyLoads.WithLabelValues("dir", "ok").Inc()
	return true, nil
}

// SetPushed puts in force the documents the server pushed (revision is the
// server's), combined with the directory's.
func (p *PolicyLoader) SetPushed(docs []policy.Document, revision int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.apply(p.local, docs); err != nil {
		p.s.metrics.policyLoads.WithLabelValues("server", "error").Inc()
		return fmt.Errorf("proxy: policies from the server (revision %d) refused, the last good set stays in force: %w", revision, err)
	}
	p.pushed, p.pushedRev = docs, revision
	p.s.metrics.policyLoads.WithLabelValues("server", "ok").Inc()
	return nil
}

// apply builds the set of local and pushed and puts it in force. p.mu is
// held.
func (p *PolicyLoader) apply(local, pushed []policy.Document) error {
	set, err := policy.NewSet(slices.Concat(local, pushed), p.opts...)
	if err != nil {
		return err
	}
	if p.fetcher != nil {
		set = set.WithJWKSFetcher(p.fetcher)
	}
	p.s.SetPolicy(set)
	p.s.metrics.policyDocuments.Set(float64(len(local) + len(pushed)))
	p.log.Info("proxy: policy in force", "documents_local", len(local), "documents_server", len(pushed))
	return nil
}

// Run polls the directory every interval until ctx is done, logging what
// it refuses.
func (p *PolicyLoader) Run(ctx context.Context, interval time.Duration) {
	if p.dir == "" {
		return
	}
	supervise.Every(ctx, interval, func() {
		if _, err := p.ReloadDir(); err != nil {
			p.log.Error(err.Error())
		}
	})
}

// dirFingerprint names every policy file of dir with its size, time of
// modification and inode: it changes when ReloadDir must read again.
func dirFingerprint(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s\x00%d\x00%d\x00%d\n", e.Name(), fi.Size(), fi.ModTime().UnixNano(), inode(fi))
	}
	return b.String(), nil
}
