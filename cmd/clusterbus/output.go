package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// addOutputFlag adds -o/--output (json or yaml) to a read command; empty
// keeps the command's table.
func addOutputFlag(cmd *cobra.Command, out *string) {
	cmd.Flags().StringVarP(out, "output", "o", "", "output format: json or yaml (default: a table)")
}

func checkOutput(format string) error {
	switch format {
	case "", "json", "yaml":
		return nil
	}
	return &exitError{code: 2, err: fmt.Errorf("-o %q: want json or yaml", format)}
}

// writeOutput prints the JSON document raw as format (json or yaml).
func writeOutput(w io.Writer, format string, raw []byte) error {
	if format == "yaml" {
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return err
		}
		b, err := yaml.Marshal(numbersAsYAML(v))
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return printJSON(w, raw)
}

// numbersAsYAML turns json.Number into int64 or float64 so that YAML prints
// them as numbers, not strings.
func numbersAsYAML(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbersAsYAML(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbersAsYAML(e)
		}
	}
	return v
}

// readInput resolves an --input value: "@FILE" reads the file, "-" reads
// standard input, anything else is the value itself.
func readInput(v string, stdin io.Reader) ([]byte, error) {
	switch {
	case v == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		if err != nil {
			return nil, fmt.Errorf("--input -: read standard input: %w", err)
		}
		return b, nil
	case strings.HasPrefix(v, "@"):
		b, err := os.ReadFile(v[1:])
		if err != nil {
			return nil, fmt.Errorf("--input %s: %w", v, err)
		}
		return b, nil
	}
	return []byte(v), nil
}
