package proxy

import (
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/ratings/0", "/ratings/0"},
		{"/public/../admin", "/admin"},
		{"/a//b/./c/", "/a/b/c/"},
		{"/..", "/"},
		{"/a/%2e%2e/b", "/b"},
		{"/a%2Fb", "/a/b"},
		{"/", "/"},
	} {
		u, err := url.ParseRequestURI(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		normalizePath(u)
		if u.Path != tc.want || (u.RawPath != "" && u.EscapedPath() != tc.in) {
			t.Errorf("normalizePath(%q) = %q (raw %q), want %q", tc.in, u.Path, u.RawPath, tc.want)
		}
	}
}

// FuzzNormalizePath: whatever the request line, the path authorization
// sees has no dot segments or repeated slashes, and normalizing again
// changes nothing, so the app is sent the path that was authorized.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/a/../b", "//x", "/%2e%2e/", "/a/./b/", "/a%2Fb/..", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.ParseRequestURI(raw)
		if err != nil || !strings.HasPrefix(u.Path, "/") {
			return
		}
		normalizePath(u)
		p := u.Path
		clean := path.Clean(p)
		if p != clean && p != clean+"/" {
			t.Fatalf("%q normalized to %q, not clean", raw, p)
		}
		again := *u
		normalizePath(&again)
		if again.Path != p {
			t.Fatalf("%q: normalizing twice gives %q then %q", raw, p, again.Path)
		}
		if back, err := url.ParseRequestURI(u.RequestURI()); err != nil || back.Path != p {
			t.Fatalf("%q: the app would read %q (%v), authorization saw %q", raw, back.Path, err, p)
		}
	})
}
