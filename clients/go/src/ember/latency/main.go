// ember-latency: times single gRPC calls from a Go client, for benchmarks/bench.py.
//
//	ember-latency host:port
//
// Reads one command per line on stdin and answers each with one line on stdout, so the caller
// decides what runs when (interleaving with other measurements, open-loop pacing) while the
// timing itself is taken here, around the call only:
//
//	embed <text>   unary Embed of one text (REALTIME, FLOAT32_BYTES) -> "<nanoseconds>"
//	wall <text>    the same call -> "<nanoseconds> <start> <end>", start and end as Unix
//	               nanoseconds, to set beside a server's own clock readings (same host)
//	list           unary ListModels, a round trip with no model work -> "<nanoseconds>"
//	health         unary Health.Check, the cheapest round trip the server answers -> "<nanoseconds>"
//
// A failed call answers "error <message>". The text is the rest of the line (no newlines).
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	emberv1 "ember/v1"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ember-latency host:port")
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	conn, err := grpc.DialContext(ctx, os.Args[1], grpc.WithInsecure(), grpc.WithBlock())
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer conn.Close()
	embedder := emberv1.NewEmbedderClient(conn)
	models := emberv1.NewModelsClient(conn)
	health := healthpb.NewHealthClient(conn)

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		cmd, text, _ := strings.Cut(in.Text(), " ")
		var call func(context.Context) error
		switch cmd {
		case "embed", "wall":
			req := &emberv1.EmbedRequest{Inputs: []string{text}, Priority: emberv1.Priority_PRIORITY_REALTIME,
				Encoding: emberv1.Encoding_ENCODING_FLOAT32_BYTES}
			call = func(ctx context.Context) error { _, err := embedder.Embed(ctx, req); return err }
		case "list":
			req := &emberv1.ListModelsRequest{}
			call = func(ctx context.Context) error { _, err := models.ListModels(ctx, req); return err }
		case "health":
			req := &healthpb.HealthCheckRequest{}
			call = func(ctx context.Context) error { _, err := health.Check(ctx, req); return err }
		default:
			fmt.Fprintf(out, "error unknown command %q\n", cmd)
			out.Flush()
			continue
		}
		t0 := time.Now()
		err := call(context.Background())
		elapsed := time.Since(t0)
		if err != nil {
			fmt.Fprintf(out, "error %v\n", err)
		} else if cmd == "wall" {
			start := t0.UnixNano()
			fmt.Fprintf(out, "%d %d %d\n", elapsed.Nanoseconds(), start, start+elapsed.Nanoseconds())
		} else {
			fmt.Fprintf(out, "%d\n", elapsed.Nanoseconds())
		}
		out.Flush()
	}
}
