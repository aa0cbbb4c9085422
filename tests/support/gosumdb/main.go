// Command gosumdb is the upstream side of wharf's Go interop tests: a GOPROXY and a checksum
// database for a directory of module sources, built with golang.org/x/mod itself so every byte
// and hash is what the real ecosystem produces.
//
// It owns: turning `<src>/<module path>@<version>/` directories into the go command's
// `cache/download` layout (list, .info, .mod, .zip via zip.CreateFromDir), computing their h1
// hashes, and serving `/mod/` (that tree) and `/sumdb/` (sumdb.NewServer over a TestServer signed
// with a fresh Ed25519 key) on one loopback listener. It must not touch the network beyond that
// listener.
//
// It prints one JSON line on stdout ({"addr", "vkey", "modules"}) once it is ready, then serves
// until killed. With -tamper path@version, the zip served for that version is a valid module zip
// whose content differs from the one recorded in the checksum database.
//
// Built by tests/interop_go.rs in GOPATH mode (stdlib and golang.org/x/mod only).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	modzip "golang.org/x/mod/zip"
)

// dbName is the checksum database's name; clients and wharf know it by this name.
const dbName = "sum.test"

// infoTime is the publication time recorded in every .info file.
const infoTime = "2024-01-02T03:04:05Z"

// published describes one module version in the JSON line.
type published struct {
	// Zip and Mod are the h1 hashes recorded in the checksum database (go.sum syntax).
	Zip string `json:"zip"`
	Mod string `json:"mod"`
	// ZipSHA256 is the hex SHA-256 of the zip file actually served (differs from the
	// hashed one under -tamper).
	ZipSHA256 string `json:"zip_sha256"`
	Tampered  bool   `json:"tampered"`
}

type ready struct {
	Addr    string               `json:"addr"`
	VKey    string               `json:"vkey"`
	Modules map[string]published `json:"modules"`
}

func main() {
	src := flag.String("src", "", "directory of module sources, one `<module path>@<version>` directory each")
	out := flag.String("out", "", "directory to write the cache/download tree into (must be empty or missing)")
	tamper := flag.String("tamper", "", "comma-separated path@version list whose served zip differs from the hashed one")
	unix := flag.String("unix", "", "also serve the module tree, from its root, on this Unix socket")
	flag.Parse()
	if *src == "" || *out == "" {
		log.Fatal("usage: gosumdb -src DIR -out DIR [-tamper path@version,...]")
	}
	tampered := map[string]bool{}
	for _, t := range strings.Split(*tamper, ",") {
		if t = strings.TrimSpace(t); t != "" {
			tampered[t] = true
		}
	}

	versions, err := findModules(*src)
	if err != nil {
		log.Fatal(err)
	}
	gosum := map[string][]byte{}
	modules := map[string]published{}
	lists := map[string][]string{}
	for _, mv := range versions {
		key := mv.Path + "@" + mv.Version
		p, lines, err := publish(mv, filepath.Join(*src, filepath.FromSlash(key)), *out, tampered[key])
		if err != nil {
			log.Fatalf("%s: %v", key, err)
		}
		gosum[key] = lines
		modules[key] = p
		lists[mv.Path] = append(lists[mv.Path], mv.Version)
		delete(tampered, key)
	}
	for t := range tampered {
		log.Fatalf("-tamper %s: no such module version under %s", t, *src)
	}
	for mod, vs := range lists {
		semver.Sort(vs)
		dir, err := escapedDir(*out, mod)
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "list"), []byte(strings.Join(vs, "\n")+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
	}

	skey, vkey, err := note.GenerateKey(rand.Reader, dbName)
	if err != nil {
		log.Fatal(err)
	}
	ops := sumdb.NewTestServer(skey, func(path, vers string) ([]byte, error) {
		if lines, ok := gosum[path+"@"+vers]; ok {
			return lines, nil
		}
		return nil, os.ErrNotExist
	})
	// Record every version now, in a fixed order, so the tree never grows while clients read
	// it: every lookup carries the same signed tree head and needs the same tiles.
	for _, mv := range versions {
		if _, err := ops.Lookup(context.Background(), mv); err != nil {
			log.Fatal(err)
		}
	}

	mux := http.NewServeMux()
	mux.Handle("/mod/", http.StripPrefix("/mod", fileTree(*out)))
	mux.Handle("/sumdb/", http.StripPrefix("/sumdb", sumdb.NewServer(ops)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	line, err := json.Marshal(ready{Addr: ln.Addr().String(), VKey: vkey, Modules: modules})
	if err != nil {
		log.Fatal(err)
	}
	if *unix != "" {
		ul, err := net.Listen("unix", *unix)
		if err != nil {
			log.Fatal(err)
		}
		go func() { log.Fatal(http.Serve(ul, logRequests(fileTree(*out)))) }()
	}
	fmt.Println(string(line))
	log.Fatal(http.Serve(ln, logRequests(mux)))
}

// findModules lists the `<module path>@<version>` directories under src, sorted.
func findModules(src string) ([]module.Version, error) {
	var list []module.Version
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.IsDir() || !strings.Contains(info.Name(), "@") {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		i := strings.LastIndex(rel, "@")
		mv := module.Version{Path: filepath.ToSlash(rel[:i]), Version: rel[i+1:]}
		if err := module.Check(mv.Path, mv.Version); err != nil {
			return err
		}
		list = append(list, mv)
		return filepath.SkipDir
	})
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("no <module>@<version> directories under %s", src)
	}
	module.Sort(list)
	return list, nil
}

// escapedDir creates and returns `<out>/<escaped module>/@v`.
func escapedDir(out, mod string) (string, error) {
	esc, err := module.EscapePath(mod)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(out, filepath.FromSlash(esc), "@v")
	return dir, os.MkdirAll(dir, 0o755)
}

// publish writes .info, .mod and .zip for one version and returns its go.sum lines.
func publish(mv module.Version, dir, out string, tamper bool) (published, []byte, error) {
	var p published
	vdir, err := escapedDir(out, mv.Path)
	if err != nil {
		return p, nil, err
	}
	ev, err := module.EscapeVersion(mv.Version)
	if err != nil {
		return p, nil, err
	}
	base := filepath.Join(vdir, ev)

	info, _ := json.Marshal(map[string]string{"Version": mv.Version, "Time": infoTime})
	if err := os.WriteFile(base+".info", info, 0o644); err != nil {
		return p, nil, err
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if os.IsNotExist(err) {
		gomod = []byte(fmt.Sprintf("module %s\n", mv.Path))
	} else if err != nil {
		return p, nil, err
	}
	if err := os.WriteFile(base+".mod", gomod, 0o644); err != nil {
		return p, nil, err
	}
	if p.Mod, err = dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gomod)), nil
	}); err != nil {
		return p, nil, err
	}

	if err := writeZip(base+".zip", mv, dir); err != nil {
		return p, nil, err
	}
	if p.Zip, err = dirhash.HashZip(base+".zip", dirhash.Hash1); err != nil {
		return p, nil, err
	}
	if tamper {
		// Same module plus one file: a structurally valid zip whose h1 differs.
		tmp, err := os.MkdirTemp("", "gosumdb-tamper-")
		if err != nil {
			return p, nil, err
		}
		defer os.RemoveAll(tmp)
		if err := copyTree(dir, tmp); err != nil {
			return p, nil, err
		}
		if err := os.WriteFile(filepath.Join(tmp, "tampered.txt"), []byte("not the published content\n"), 0o644); err != nil {
			return p, nil, err
		}
		if err := writeZip(base+".zip", mv, tmp); err != nil {
			return p, nil, err
		}
		p.Tampered = true
	}
	zipBytes, err := os.ReadFile(base + ".zip")
	if err != nil {
		return p, nil, err
	}
	sum := sha256.Sum256(zipBytes)
	p.ZipSHA256 = hex.EncodeToString(sum[:])

	lines := fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", mv.Path, mv.Version, p.Zip, mv.Path, mv.Version, p.Mod)
	return p, []byte(lines), nil
}

func writeZip(name string, mv module.Version, dir string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := modzip.CreateFromDir(f, mv, dir); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyTree(from, to string) error {
	return filepath.Walk(from, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

// fileTree serves regular files under root; anything else (missing, a directory) is a 404.
func fileTree(root string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := path.Clean("/" + r.URL.Path)
		f, err := os.Open(filepath.Join(root, filepath.FromSlash(name)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			http.NotFound(w, r)
			return
		}
		switch {
		case strings.HasSuffix(name, ".info"):
			w.Header().Set("Content-Type", "application/json")
		case strings.HasSuffix(name, ".zip"):
			w.Header().Set("Content-Type", "application/zip")
		default:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		http.ServeContent(w, r, "", time.Time{}, f)
	})
}

// logRequests writes one stderr line per request, for test failure output.
func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		log.Printf("%s %s -> %d", r.Method, r.URL.Path, rec.status)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
