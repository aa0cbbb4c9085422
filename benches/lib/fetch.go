// fetch: N concurrent HTTP/1.1 GETs, bodies read into a 1 MiB buffer and discarded.
//
//	fetch [-n 8] [-repeat 1] [-size BYTES] [-accept TYPE] [-s3-key FILE -s3-secret FILE
//	      -s3-region REGION] URL [URL...]
//
// Each of the n streams sends `repeat` GETs one after another on its own keep-alive connection;
// stream i asks URL number i modulo the number of URLs (several replicas of one server). With
// -s3-key and -s3-secret (files holding an access key id and its secret) every GET is signed
// with AWS Signature Version 4, for reading an object straight from an S3 store.
// Prints one JSON object: wall seconds (from releasing all streams to the last body byte), total
// bytes, per-request seconds, seconds to the first body byte, statuses and X-Cache headers, and
// errors. A response that is not 200, or whose length differs from -size (when given), is an
// error. Used by bench.py, which only builds 127.0.0.1 URLs.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

type result struct {
	Wall     float64   `json:"wall"`
	Bytes    int64     `json:"bytes"`
	Seconds  []float64 `json:"seconds"`
	First    []float64 `json:"first"`
	Statuses []int     `json:"statuses"`
	Cache    []string  `json:"cache"`
	Errors   []string  `json:"errors"`
}

// The SHA-256 of an empty payload, which is what a GET carries.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// signV4 adds AWS Signature Version 4 headers to a GET without a query string.
func signV4(req *http.Request, key, secret, region string) {
	date := time.Now().UTC().Format("20060102T150405Z")
	day := date[:8]
	req.Header.Set("X-Amz-Date", date)
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	signed := "host;x-amz-content-sha256;x-amz-date"
	canonical := strings.Join([]string{
		req.Method,
		req.URL.EscapedPath(),
		req.URL.RawQuery,
		"host:" + req.URL.Host + "\nx-amz-content-sha256:" + emptySHA256 + "\nx-amz-date:" + date + "\n",
		signed,
		emptySHA256,
	}, "\n")
	digest := sha256.Sum256([]byte(canonical))
	scope := day + "/" + region + "/s3/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + date + "\n" + scope + "\n" + hex.EncodeToString(digest[:])
	k := hmacSHA256([]byte("AWS4"+secret), day)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, "s3")
	k = hmacSHA256(k, "aws4_request")
	req.Header.Set("Authorization", fmt.Sprintf(
		"AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
		key, scope, signed, hex.EncodeToString(hmacSHA256(k, toSign))))
}

func readLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return strings.TrimSpace(string(b))
}

func main() {
	n := flag.Int("n", 1, "concurrent streams")
	repeat := flag.Int("repeat", 1, "sequential GETs per stream, on one connection")
	size := flag.Int64("size", -1, "expected body length (-1: any)")
	accept := flag.String("accept", "", "Accept header")
	s3Key := flag.String("s3-key", "", "file holding an S3 access key id: sign the GETs")
	s3Secret := flag.String("s3-secret", "", "file holding the S3 secret access key")
	s3Region := flag.String("s3-region", "us-east-1", "S3 region for the signature")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: fetch [-n N] [-repeat K] [-size BYTES] [-accept TYPE] "+
			"[-s3-key FILE -s3-secret FILE -s3-region REGION] URL [URL...]")
		os.Exit(2)
	}
	urls := flag.Args()
	keyID, secret := "", ""
	if *s3Key != "" {
		keyID, secret = readLine(*s3Key), readLine(*s3Secret)
	}

	client := &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: *n,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		ReadBufferSize:      256 << 10,
		// https URLs are the benchmark's own servers on loopback with a throwaway certificate;
		// HTTP/1.1 there too (a custom TLS config keeps Go from offering h2).
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}

	total := *n * *repeat
	res := result{
		Seconds:  make([]float64, total),
		First:    make([]float64, total),
		Statuses: make([]int, total),
		Cache:    make([]string, total),
		Errors:   []string{},
	}
	var mu sync.Mutex

	one := func(slot int, url string, buf []byte) {
		began := time.Now()
		req, _ := http.NewRequest("GET", url, nil)
		if *accept != "" {
			req.Header.Set("Accept", *accept)
		}
		if keyID != "" {
			signV4(req, keyID, secret, *s3Region)
		}
		var got int64
		var first float64
		status, cache := 0, ""
		fail := ""
		resp, err := client.Do(req)
		if err != nil {
			fail = err.Error()
		} else {
			status = resp.StatusCode
			cache = resp.Header.Get("X-Cache")
			for {
				m, rerr := resp.Body.Read(buf)
				if got == 0 && (m > 0 || rerr != nil) {
					first = time.Since(began).Seconds()
				}
				got += int64(m)
				if rerr == io.EOF {
					break
				}
				if rerr != nil {
					fail = rerr.Error()
					break
				}
			}
			resp.Body.Close()
			if fail == "" && status != 200 {
				fail = fmt.Sprintf("status %d", status)
			}
			if fail == "" && *size >= 0 && got != *size {
				fail = fmt.Sprintf("got %d bytes, want %d", got, *size)
			}
		}
		mu.Lock()
		res.Bytes += got
		res.Seconds[slot] = time.Since(began).Seconds()
		res.First[slot] = first
		res.Statuses[slot] = status
		res.Cache[slot] = cache
		if fail != "" {
			res.Errors = append(res.Errors, fail)
		}
		mu.Unlock()
	}

	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			<-start
			for k := 0; k < *repeat; k++ {
				one(i**repeat+k, urls[i%len(urls)], buf)
			}
		}(i)
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	res.Wall = time.Since(t0).Seconds()
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
}
