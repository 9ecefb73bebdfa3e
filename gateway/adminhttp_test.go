package gateway_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/flashgate/flashgate/internal/stack"
)

// call sends one request with an Authorization header (none when authz is
// empty) and returns the status code and body.
func call(t *testing.T, s *stack.Stack, method, url, authz string, body []byte) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	req.Header.Set("X-Device-ID", "walk-device")
	req.Header.Set("X-User-ID", "walk-user") // read only with a checkout token
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
