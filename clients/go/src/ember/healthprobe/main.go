// grpc_health_probe: checks a gRPC server's standard health service, for Docker HEALTHCHECK and
// Kubernetes exec probes. Flags and exit codes follow grpc-ecosystem's grpc_health_probe, so it
// drops in where that tool is documented; this one is built from Debian's grpc-go in GOPATH mode
// (`make health-probe`), like the rest of clients/go, because the image must build offline.
//
//	grpc_health_probe -addr=localhost:50051 [-service=model/all-MiniLM-L6-v2]
//
// Exit codes: 0 SERVING, 1 bad flags, 2 no connection, 3 the RPC failed, 4 not SERVING.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

const (
	exitOK         = 0
	exitFlags      = 1
	exitConnection = 2
	exitRPC        = 3
	exitUnhealthy  = 4
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("grpc_health_probe", flag.ContinueOnError)
	addr := fs.String("addr", "", "address of the server (host:port)")
	service := fs.String("service", "", "service to check (\"\" = the whole server)")
	connectTimeout := fs.Duration("connect-timeout", time.Second, "timeout for establishing the connection")
	rpcTimeout := fs.Duration("rpc-timeout", time.Second, "timeout for the health check RPC")
	useTLS := fs.Bool("tls", false, "use TLS")
	noVerify := fs.Bool("tls-no-verify", false, "with -tls, do not verify the server's certificate")
	caCert := fs.String("tls-ca-cert", "", "with -tls, the CA certificate (PEM) that signed the server's")
	serverName := fs.String("tls-server-name", "", "with -tls, the name to verify the certificate against")
	userAgent := fs.String("user-agent", "grpc_health_probe", "user-agent header value")
	header := fs.String("rpc-header", "", "an extra metadata header, name:value (e.g. authorization:Bearer KEY)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return exitFlags
	}
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "error: -addr is required")
		return exitFlags
	}
	opts := []grpc.DialOption{grpc.WithBlock(), grpc.WithUserAgent(*userAgent)}
	if *useTLS {
		cfg := &tls.Config{InsecureSkipVerify: *noVerify, ServerName: *serverName}
		if *caCert != "" {
			pem, err := ioutil.ReadFile(*caCert)
			if err != nil {
				fmt.Fprintf(os.Stderr, "error: reading -tls-ca-cert: %v\n", err)
				return exitFlags
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				fmt.Fprintf(os.Stderr, "error: no certificate in %s\n", *caCert)
				return exitFlags
			}
			cfg.RootCAs = pool
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}

	dialCtx, cancel := context.WithTimeout(context.Background(), *connectTimeout)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, *addr, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: failed to connect service at %q: %v\n", *addr, err)
		return exitConnection
	}
	defer conn.Close()

	ctx, rpcCancel := context.WithTimeout(context.Background(), *rpcTimeout)
	defer rpcCancel()
	if *header != "" {
		for i := 0; i < len(*header); i++ {
			if (*header)[i] == ':' {
				ctx = metadata.AppendToOutgoingContext(ctx, (*header)[:i], (*header)[i+1:])
				break
			}
		}
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: *service})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: health rpc failed: %v\n", err)
		return exitRPC
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		fmt.Fprintf(os.Stderr, "service unhealthy (responded with %q)\n", resp.GetStatus().String())
		return exitUnhealthy
	}
	fmt.Printf("status: %v\n", resp.GetStatus().String())
	return exitOK
}
