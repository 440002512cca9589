package server

import (
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/policy"
)

// FuzzSplitPolicies: no file panics the cutting of documents out of an
// apply, and every document accepted is stored as a text that parses on
// its own to that same document.
func FuzzSplitPolicies(f *testing.F) {
	f.Add([]byte(strictDoc))
	f.Add([]byte(strictDoc + "---\n" + allowDoc))
	f.Add([]byte("---\n" + allowDoc + "--- # end\n"))
	f.Add([]byte(strings.ReplaceAll(strictDoc+"---\r\n"+allowDoc, "\n", "\r\n")))
	f.Add([]byte(`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"a"}}`))
	f.Add([]byte("kind: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, texts, err := splitPolicies("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "policy: fuzz.yaml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		if len(docs) != len(texts) {
			t.Fatalf("%d documents, %d texts", len(docs), len(texts))
		}
		for i, d := range docs {
			again, err := policy.Parse("again.yaml", texts[i])
			if err != nil || len(again) != 1 || again[0].Kind != d.Kind || again[0].Ref() != d.Ref() {
				t.Fatalf("document %d (%s %s) stored as %q, which parses to %v, %v", i, d.Kind, d.Ref(), texts[i], again, err)
			}
		}
	})
}
