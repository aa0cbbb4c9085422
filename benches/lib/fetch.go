// fetch: N concurrent HTTP/1.1 GETs of one URL, bodies read into a 1 MiB buffer and discarded.
//
//	fetch [-n 8] [-repeat 1] [-size BYTES] [-accept TYPE] http://127.0.0.1:PORT/PATH
//
// Each of the n streams sends `repeat` GETs one after another on its own keep-alive connection.
// Prints one JSON object: wall seconds (from releasing all streams to the last body byte), total
// bytes, per-request seconds and statuses, and errors. A response that is not 200, or whose length
// differs from -size (when given), is an error. Used by bench.py, which only builds 127.0.0.1 URLs.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

type result struct {
	Wall     float64   `json:"wall"`
	Bytes    int64     `json:"bytes"`
	Seconds  []float64 `json:"seconds"`
	Statuses []int     `json:"statuses"`
	Errors   []string  `json:"errors"`
}

func main() {
	n := flag.Int("n", 1, "concurrent streams")
	repeat := flag.Int("repeat", 1, "sequential GETs per stream, on one connection")
	size := flag.Int64("size", -1, "expected body length (-1: any)")
	accept := flag.String("accept", "", "Accept header")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: fetch [-n N] [-repeat K] [-size BYTES] [-accept TYPE] URL")
		os.Exit(2)
	}
	url := flag.Arg(0)

	client := &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: *n,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		ReadBufferSize:      256 << 10,
	}}

	total := *n * *repeat
	res := result{Seconds: make([]float64, total), Statuses: make([]int, total), Errors: []string{}}
	var mu sync.Mutex

	one := func(slot int, buf []byte) {
		began := time.Now()
		req, _ := http.NewRequest("GET", url, nil)
		if *accept != "" {
			req.Header.Set("Accept", *accept)
		}
		var got int64
		status := 0
		fail := ""
		resp, err := client.Do(req)
		if err != nil {
			fail = err.Error()
		} else {
			status = resp.StatusCode
			for {
				m, rerr := resp.Body.Read(buf)
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
		res.Statuses[slot] = status
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
				one(i**repeat+k, buf)
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
