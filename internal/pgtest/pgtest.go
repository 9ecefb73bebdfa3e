// Package pgtest gives a test a fresh PostgreSQL database on the machine's
// server (FLASHGATE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres),
// dropped when the test ends. A missing server fails the test: CI must run
// the PostgreSQL suite, never skip it.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// AdminDSN is the maintenance connection used to create databases.
func AdminDSN() string {
	if v := os.Getenv("FLASHGATE_TEST_POSTGRES"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// Fresh creates an empty database and returns its DSN.
func Fresh(t testing.TB) string {
	t.Helper()
	admin, err := sql.Open("pgx", AdminDSN())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		t.Fatalf("pgtest: PostgreSQL not reachable at %s (make test starts it: scripts/test-deps.sh): %v", AdminDSN(), err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "flashgate_test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		a, err := sql.Open("pgx", AdminDSN())
		if err != nil {
			return
		}
		defer a.Close()
		_, _ = a.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
	})
	u, err := url.Parse(AdminDSN())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
