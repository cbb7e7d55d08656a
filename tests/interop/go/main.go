// Command peer is a real Go mTLS peer for sigil's interoperability tests.
// It uses only the standard library, like a plain Go service would.
//
// Exit codes: 0 success, 1 TLS/verification/HTTP failure, 2 bad usage or unreadable input.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

const usage = `usage:
  peer server --cert F --key F --ca F --crl F [--listen ADDR] [--port-file F] [--crl-leaf-only]
  peer client --cert F --key F --ca F --url URL [--crl F] [--crl-leaf-only] [--server-name N]
  peer csr --key-type p256|p384|ed25519|rsa2048|rsa3072|rsa4096 --cn NAME [--dns NAME]... --key-out F --csr-out F
`

// errUsage marks errors caused by the caller (exit 2) rather than by the peer (exit 1).
type errUsage struct{ error }

func usageErr(format string, a ...any) error { return errUsage{fmt.Errorf(format, a...)} }

// multi collects a repeatable flag such as --dns.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "server":
		err = runServer(args)
	case "client":
		err = runClient(args)
	case "csr":
		err = runCSR(args)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer %s: %v\n", os.Args[1], err)
		var u errUsage
		if errors.As(err, &u) || errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// need reports the first empty required flag as a usage error.
func need(fs *flag.FlagSet, names ...string) error {
	for _, n := range names {
		if fs.Lookup(n).Value.String() == "" {
			return usageErr("--%s is required", n)
		}
	}
	return nil
}
