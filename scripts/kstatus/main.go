// Command kstatus prints what sigs.k8s.io/cli-utils kstatus (the status library behind Flux's health
// checks and `helm --wait`) computes for Kubernetes objects: `status.Compute`, nothing added.
//
// Input on stdin: JSON objects, one after another (one per line, as `kubectl get -o json` items or API
// responses), or JSON arrays of them. Output: one JSON line per object, in order, written as soon as its
// object is read, so that a caller can keep one process and ask it one object at a time:
//
//	{"status":"InProgress","message":"..."}
//
// Compute's error (a field of the wrong type) is printed as {"status":"Unknown","message":"","error":..},
// what kstatus's pollers report for such an object. Bad JSON ends the program with exit status 1.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  status.Status `json:"status"`
	Message string        `json:"message"`
	Error   string        `json:"error,omitempty"`
}

func compute(raw json.RawMessage) (result, error) {
	// apimachinery's decoder, as client-go's: whole numbers become int64, which kstatus's NestedInt64
	// lookups of generation and observedGeneration require.
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(raw, &obj); err != nil {
		return result{}, err
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		return result{Status: status.UnknownStatus, Error: err.Error()}, nil
	}
	return result{Status: res.Status, Message: res.Message}, nil
}

func run(in io.Reader, out io.Writer) error {
	decoder := json.NewDecoder(in)
	encoder := json.NewEncoder(out)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		objects := []json.RawMessage{raw}
		if len(raw) > 0 && raw[0] == '[' {
			if err := json.Unmarshal(raw, &objects); err != nil {
				return err
			}
		}
		for _, object := range objects {
			res, err := compute(object)
			if err != nil {
				return err
			}
			if err := encoder.Encode(res); err != nil {
				return err
			}
		}
	}
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
