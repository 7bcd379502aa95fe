// ember from Go: health check, unary Embed, a bidirectional EmbedStream of 10,000 inputs (every id
// answered exactly once), both streams driven interactively (one message, wait for its answer, the
// next: 20 rounds each), and Rerank.
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
	streamInputs   = 10000
	perMessage     = 100
	pingPongRounds = 20
	roundTimeout   = 10 * time.Second
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

// recvWithin waits for one answer of a stream for at most roundTimeout: a server that answers a
// message only when the next one arrives would make an interactive client wait forever.
func recvWithin(recv func() (string, error)) (string, error) {
	type answer struct {
		id  string
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		id, err := recv()
		ch <- answer{id, err}
	}()
	select {
	case a := <-ch:
		return a.id, a.err
	case <-time.After(roundTimeout):
		return "", fmt.Errorf("no answer within %s while the stream stays open", roundTimeout)
	}
}

// pingPong drives EmbedStream and RerankStream as an interactive client does: send one message,
// wait for its answer, then send the next; the stream stays open all along.
func pingPong(ctx context.Context, embedder emberv1.EmbedderClient, reranker emberv1.RerankerClient) (int, error) {
	rounds := 0
	es, err := embedder.EmbedStream(ctx)
	if err != nil {
		return rounds, err
	}
	for r := 0; r < pingPongRounds; r++ {
		id := fmt.Sprintf("e%d", r)
		if err := es.Send(&emberv1.EmbedRequest{Inputs: []string{fmt.Sprintf("round %d", r)}, RequestId: id}); err != nil {
			return rounds, err
		}
		got, err := recvWithin(func() (string, error) {
			resp, err := es.Recv()
			if err != nil {
				return "", err
			}
			return resp.RequestId, nil
		})
		if err != nil || got != id {
			return rounds, fmt.Errorf("EmbedStream round %d: answer %q, %v", r, got, err)
		}
		rounds++
	}
	if err := es.CloseSend(); err != nil {
		return rounds, err
	}
	if _, err := es.Recv(); err != io.EOF {
		return rounds, fmt.Errorf("EmbedStream: expected the end after half-close, got %v", err)
	}
	rs, err := reranker.RerankStream(ctx)
	if err != nil {
		return rounds, err
	}
	for r := 0; r < pingPongRounds; r++ {
		id := fmt.Sprintf("r%d", r)
		req := &emberv1.RerankRequest{Query: fmt.Sprintf("query %d", r), Documents: []string{"one", "two"}, RequestId: id}
		if err := rs.Send(req); err != nil {
			return rounds, err
		}
		got, err := recvWithin(func() (string, error) {
			resp, err := rs.Recv()
			if err != nil {
				return "", err
			}
			return resp.RequestId, nil
		})
		if err != nil || got != id {
			return rounds, fmt.Errorf("RerankStream round %d: answer %q, %v", r, got, err)
		}
		rounds++
	}
	return rounds, rs.CloseSend()
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

	// The same texts as sign bits (ENCODING_UBINARY): ceil(dimensions / 8) bytes, first component in the high bit
	bin, err := embedder.Embed(cctx, &emberv1.EmbedRequest{Inputs: []string{"hello world", "ember is fast"},
		Encoding: emberv1.Encoding_ENCODING_UBINARY})
	if err != nil {
		return fmt.Errorf("Embed UBINARY: %w", err)
	}
	binaryBytes := 0
	for k, e := range bin.Embeddings {
		bits := e.GetPacked()
		if len(bits) != (int(emb.Dimensions)+7)/8 {
			return fmt.Errorf("UBINARY: %d bytes", len(bits))
		}
		for i, x := range v[k] {
			if (bits[i/8]>>(7-uint(i%8)))&1 == 1 != (x > 0) {
				return fmt.Errorf("UBINARY: bit %d of vector %d disagrees with its float's sign", i, k)
			}
		}
		binaryBytes = len(bits)
	}
	fmt.Printf("Embed UBINARY: %d x %d bytes, every bit the sign of the float vector's\n", len(bin.Embeddings), binaryBytes)

	sctx, scancel := context.WithTimeout(ctx, 10*time.Minute)
	defer scancel()
	inputs, ids, err := embedStream(sctx, embedder)
	if err != nil {
		return fmt.Errorf("EmbedStream: %w", err)
	}
	fmt.Printf("EmbedStream: %d inputs in %d messages, every id answered once\n", inputs, ids)

	pctx, pcancel := context.WithTimeout(ctx, 5*time.Minute)
	defer pcancel()
	rounds, err := pingPong(pctx, embedder, emberv1.NewRerankerClient(conn))
	if err != nil {
		return fmt.Errorf("ping-pong: %w", err)
	}
	fmt.Printf("ping-pong: %d rounds over EmbedStream and RerankStream, each answered before the next was sent\n", rounds)

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
		"rerank_results": len(rr.Results), "ping_pong_rounds": rounds, "binary_bytes": binaryBytes})
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
