// ember from Go: health check, unary Embed, a bidirectional EmbedStream of 10,000 inputs (every id
// answered exactly once), and Rerank.
//
//	ember-example [host:port]        (default localhost:50051)
//
// Exits 0 and prints a JSON summary on its last line when every check held, 1 otherwise.
// Built in GOPATH mode against Debian's packages: see clients/go/README.md.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	emberv1 "ember/v1"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const (
	streamInputs = 10000
	perMessage   = 100
)

// vectors decodes an EmbedResponse, whichever encoding was asked for.
func vectors(resp *emberv1.EmbedResponse) [][]float32 {
	out := make([][]float32, len(resp.Embeddings))
	for i, e := range resp.Embeddings {
		if packed := e.GetPacked(); packed != nil { // little-endian float32
			v := make([]float32, len(packed)/4)
			for k := range v {
				v[k] = math.Float32frombits(binary.LittleEndian.Uint32(packed[4*k:]))
			}
			out[i] = v
		} else {
			out[i] = e.GetValues().GetValues()
		}
	}
	return out
}

func waitServing(ctx context.Context, h healthpb.HealthClient) (string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := h.Check(cctx, &healthpb.HealthCheckRequest{Service: ""})
		cancel()
		if err == nil && r.Status == healthpb.HealthCheckResponse_SERVING {
			return r.Status.String(), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("server not SERVING after 60 s (last error: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// embedStream sends 10,000 inputs in 100 messages while it reads the answers, and checks that
// every request id comes back exactly once.
func embedStream(ctx context.Context, c emberv1.EmbedderClient) (inputs, ids int, err error) {
	stream, err := c.EmbedStream(ctx)
	if err != nil {
		return 0, 0, err
	}
	messages := streamInputs / perMessage
	sendErr := make(chan error, 1)
	go func() {
		for m := 0; m < messages; m++ {
			texts := make([]string, perMessage)
			for k := range texts {
				texts[k] = fmt.Sprintf("stream text %d", m*perMessage+k)
			}
			req := &emberv1.EmbedRequest{Inputs: texts, RequestId: fmt.Sprintf("m%d", m),
				Priority: emberv1.Priority_PRIORITY_BULK, Encoding: emberv1.Encoding_ENCODING_FLOAT32_BYTES}
			if err := stream.Send(req); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- stream.CloseSend()
	}()
	seen := map[string]int{}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return inputs, len(seen), err
		}
		seen[resp.RequestId]++
		if n := len(vectors(resp)); n != perMessage {
			return inputs, len(seen), fmt.Errorf("message %s: %d embeddings", resp.RequestId, n)
		}
		inputs += perMessage
	}
	if err := <-sendErr; err != nil {
		return inputs, len(seen), err
	}
	for m := 0; m < messages; m++ {
		if n := seen[fmt.Sprintf("m%d", m)]; n != 1 {
			return inputs, len(seen), fmt.Errorf("request id m%d answered %d times", m, n)
		}
	}
	if len(seen) != messages {
		return inputs, len(seen), fmt.Errorf("%d distinct ids answered, sent %d", len(seen), messages)
	}
	return inputs, len(seen), nil
}

func run(address string) error {
	// grpc.WithInsecure: Debian's grpc-go (1.33) predates credentials/insecure.
	conn, err := grpc.Dial(address, grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := context.Background()

	health, err := waitServing(ctx, healthpb.NewHealthClient(conn))
	if err != nil {
		return err
	}

	embedder := emberv1.NewEmbedderClient(conn)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	emb, err := embedder.Embed(cctx, &emberv1.EmbedRequest{Inputs: []string{"hello world", "ember is fast"},
		Encoding: emberv1.Encoding_ENCODING_FLOAT32_BYTES})
	if err != nil {
		return fmt.Errorf("Embed: %w", err)
	}
	v := vectors(emb)
	if len(v) != 2 || emb.Dimensions == 0 || len(v[0]) != int(emb.Dimensions) {
		return fmt.Errorf("Embed: %d vectors of %d", len(v), emb.Dimensions)
	}
	var norm float64
	for _, x := range v[0] {
		norm += float64(x) * float64(x)
	}
	if math.Abs(math.Sqrt(norm)-1) > 1e-3 {
		return fmt.Errorf("Embed: vector norm %f, expected 1", math.Sqrt(norm))
	}
	fmt.Printf("Embed: %d x %d from %s, tokens %d\n", len(v), emb.Dimensions, emb.Model, emb.Usage.GetTotalTokens())

	sctx, scancel := context.WithTimeout(ctx, 10*time.Minute)
	defer scancel()
	inputs, ids, err := embedStream(sctx, embedder)
	if err != nil {
		return fmt.Errorf("EmbedStream: %w", err)
	}
	fmt.Printf("EmbedStream: %d inputs in %d messages, every id answered once\n", inputs, ids)

	docs := []string{"Kubernetes probes the gRPC health service", "Embers glow in the fireplace",
		"A health check tells the orchestrator whether a server can take traffic"}
	// A deadline of its own: the Embed call's context has been running through the whole stream.
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	rr, err := emberv1.NewRerankerClient(conn).Rerank(rctx, &emberv1.RerankRequest{
		Query: "how do I check that a server is healthy?", Documents: docs, ReturnDocuments: true})
	if err != nil {
		return fmt.Errorf("Rerank: %w", err)
	}
	if len(rr.Results) != len(docs) {
		return fmt.Errorf("Rerank: %d results for %d documents", len(rr.Results), len(docs))
	}
	for k := 1; k < len(rr.Results); k++ {
		if rr.Results[k].Score > rr.Results[k-1].Score {
			return fmt.Errorf("Rerank: results not best first")
		}
	}
	fmt.Printf("Rerank: best %q (%.4f)\n", rr.Results[0].GetDocument(), rr.Results[0].Score)

	summary, _ := json.Marshal(map[string]interface{}{"client": "go", "health": health,
		"embed_dimensions": emb.Dimensions, "stream_inputs": inputs, "stream_ids": ids,
		"rerank_results": len(rr.Results)})
	fmt.Println(string(summary))
	return nil
}

func main() {
	address := "localhost:50051"
	if len(os.Args) > 1 {
		address = os.Args[1]
	}
	if err := run(address); err != nil {
		fmt.Fprintf(os.Stderr, "example failed: %v\n", err)
		os.Exit(1)
	}
}
