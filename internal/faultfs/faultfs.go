// Package faultfs wraps a Pebble vfs.FS for tests that need a disk that
// stalls: while the gate is closed, every fsync of a write-ahead log file
// (*.log) blocks until the gate opens again. The data path is the real file
// system; only the timing of syncs is controlled, as an fsync stall on a
// loaded disk would.
package faultfs

import (
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FS is a vfs.FS whose WAL syncs can be held.
type FS struct {
	vfs.FS
	mu      sync.Mutex
	open    chan struct{} // closed while syncs may pass
	waiting int
}

// New wraps fs (vfs.Default when nil) with the gate open.
func New(fs vfs.FS) *FS {
	if fs == nil {
		fs = vfs.Default
	}
	f := &FS{FS: fs, open: make(chan struct{})}
	close(f.open)
	return f
}

// Hold makes WAL syncs block from now on.
func (f *FS) Hold() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.open:
		f.open = make(chan struct{})
	default:
	}
}

// Release lets held and future WAL syncs through.
func (f *FS) Release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.open:
	default:
		close(f.open)
	}
}

// Waiting is how many syncs are blocked right now.
func (f *FS) Waiting() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiting
}

func (f *FS) gate() {
	f.mu.Lock()
	ch := f.open
	f.waiting++
	f.mu.Unlock()
	<-ch
	f.mu.Lock()
	f.waiting--
	f.mu.Unlock()
}

func (f *FS) wrap(name string, file vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return file, err
	}
	return &walFile{File: file, fs: f}, nil
}

func (f *FS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, c)
	return f.wrap(name, file, err)
}

func (f *FS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.ReuseForWrite(oldname, newname, c)
	return f.wrap(newname, file, err)
}

func (f *FS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, c, opts...)
	return f.wrap(name, file, err)
}

type walFile struct {
	vfs.File
	fs *FS
}

func (w *walFile) Sync() error     { w.fs.gate(); return w.File.Sync() }
func (w *walFile) SyncData() error { w.fs.gate(); return w.File.SyncData() }
func (w *walFile) SyncTo(length int64) (bool, error) {
	w.fs.gate()
	return w.File.SyncTo(length)
}
