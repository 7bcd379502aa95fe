// ember-floor: a compiled gRPC server's round trip, for benchmarks/front_end.py.
//
//	ember-floor PORT PAUSE_MS
//
// Serves ember.v1.Embedder/Embed on 127.0.0.1:PORT: each call busy-waits PAUSE_MS (where a
// server would run the model) and answers one fixed 384-d FLOAT32_BYTES embedding, the size of
// all-MiniLM-L6-v2's. No model, no tokenizer: set beside `floor_server.py --fixed --pause-ms`,
// the same calls and pause in a Python grpc.aio server, it shows what the Python gRPC stack costs
// around a pause. Prints "ready" once it listens.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	emberv1 "ember/v1"

	"google.golang.org/grpc"
)

type floor struct {
	emberv1.UnimplementedEmbedderServer
	pause  time.Duration
	vector []byte
}

func (f *floor) Embed(_ context.Context, req *emberv1.EmbedRequest) (*emberv1.EmbedResponse, error) {
	if until := time.Now().Add(f.pause); f.pause > 0 {
		for time.Now().Before(until) {
		}
	}
	return &emberv1.EmbedResponse{
		Embeddings: []*emberv1.Embedding{{Data: &emberv1.Embedding_Packed{Packed: f.vector},
			Tokens: uint32(len(req.Inputs))}}, // the inputs counted: the request was read
		Dimensions: uint32(len(f.vector) / 4),
	}, nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: ember-floor PORT PAUSE_MS")
		os.Exit(1)
	}
	ms, err := strconv.ParseFloat(os.Args[2], 64)
	if err != nil || ms < 0 {
		fmt.Fprintln(os.Stderr, "PAUSE_MS must be a number >= 0")
		os.Exit(1)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	server := grpc.NewServer()
	emberv1.RegisterEmbedderServer(server, &floor{pause: time.Duration(ms * 1e6), vector: make([]byte, 384*4)})
	fmt.Println("ready")
	if err := server.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
