// Command mtlsdemo runs an HTTPS server and a client that both read sigil certificate
// directories through package certdir, and connects every -interval for -rounds rounds,
// each time with a new TLS handshake. It prints the serials both sides presented, and
// fails unless each side showed at least -min-serials different certificates: proof that
// renewals were picked up without a restart. With -expect-refused it instead succeeds only
// if the server refuses the client's certificate (for example, after it was revoked).
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"sigil.example/certdir/certdir"
)

func main() {
	serverDir := flag.String("server-dir", "", "certificate directory of the server")
	clientDir := flag.String("client-dir", "", "certificate directory of the client")
	serverName := flag.String("server-name", "", "a DNS name in the server's certificate")
	rounds := flag.Int("rounds", 1, "connections to make")
	interval := flag.Duration("interval", time.Second, "pause between connections")
	minSerials := flag.Int("min-serials", 1, "different certificates each side must show")
	expectRefused := flag.Bool("expect-refused", false, "succeed only if the client is refused")
	flag.Parse()

	server, err := certdir.Open(*serverDir)
	if err != nil {
		log.Fatal(err)
	}
	client, err := certdir.Open(*clientDir)
	if err != nil {
		log.Fatal(err)
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", server.ServerConfig())
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%x", r.TLS.PeerCertificates[0].SerialNumber)
	}))

	clientTLS, err := client.ClientConfig(*serverName)
	if err != nil {
		log.Fatal(err)
	}
	var serverSerial string
	clientTLS.VerifyConnection = func(cs tls.ConnectionState) error {
		serverSerial = fmt.Sprintf("%x", cs.PeerCertificates[0].SerialNumber)
		return nil
	}
	httpClient := &http.Client{
		Timeout: 10 * time.Second,
		// A new connection, and so a new handshake, for every request.
		Transport: &http.Transport{TLSClientConfig: clientTLS, DisableKeepAlives: true},
	}
	url := "https://" + ln.Addr().(*net.TCPAddr).String() + "/"

	servers, clients := map[string]bool{}, map[string]bool{}
	for i := 1; i <= *rounds; i++ {
		if i > 1 {
			time.Sleep(*interval)
		}
		resp, err := httpClient.Get(url)
		if err != nil {
			if *expectRefused {
				fmt.Printf("refused as expected: %v\n", err)
				return
			}
			log.Fatalf("round %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if *expectRefused {
			log.Fatalf("round %d: the server accepted client certificate %s", i, body)
		}
		servers[serverSerial], clients[string(body)] = true, true
		fmt.Printf("round %d: server certificate %s, client certificate %s\n", i, serverSerial, body)
	}
	fmt.Printf("server certificates seen: %d, client certificates seen: %d\n", len(servers), len(clients))
	if len(servers) < *minSerials || len(clients) < *minSerials {
		os.Exit(1)
	}
}
