package pgguard_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// This file checks, by reading the source, that no SQL is built from
// strings at run time. It parses every non-test Go file of the repository
// and reports:
//
//   - a call of a method named Exec, Query or QueryRow whose SQL argument
//     (the one after the context) is not a constant: a string literal, a
//     constant declared in the same package, or a concatenation of those;
//   - a call of fmt.Sprintf whose format contains an upper-case SQL
//     keyword;
//   - in packages service and idempotencyhttp, any such call at all, because
//     their queries go through dbgen, which sqlc generates from db/queries
//     (make verify fails when dbgen and the .sql files differ).
//
// It matches method names, not types, so it may flag a method of another
// type that shares a name. It does not follow SQL passed between
// packages, so a call it cannot prove constant fails the test.

// nonConstantSQLAllowed lists the files that may pass non-constant SQL,
// with the reason.
var nonConstantSQLAllowed = map[string]string{
	"internal/pgfind/database.go": "CREATE, ALTER and DROP DATABASE take the database name as an identifier, which cannot be a bind parameter; the name is quoted with pgx.Identifier.Sanitize",
	"internal/pgtest/template.go": "ALTER DATABASE takes the template name as an identifier, quoted with pgx.Identifier.Sanitize",
	"internal/pgtest/clones.go":   "CREATE, ALTER ... RENAME and DROP DATABASE take the names of test clones as identifiers, quoted with pgx.Identifier.Sanitize",
}

// skippedDirs are not scanned. cmd/pgguard-bench is a load tool outside the
// library: it applies SQL files an operator names with -apply.
var skippedDirs = map[string]bool{".git": true, "testdata": true, "cmd/pgguard-bench": true}

// queryMethods maps a query method to the index of its SQL argument.
var queryMethods = map[string]int{"Exec": 1, "Query": 1, "QueryRow": 1}

// dbgenOnlyPackages are the directories whose queries must all go through
// dbgen.
var dbgenOnlyPackages = map[string]bool{"service": true, "idempotencyhttp": true}

var sqlKeyword = regexp.MustCompile(`\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE|GRANT)\s`)

func TestQueriesAreStaticSQL(t *testing.T) {
	t.Parallel()

	packages := map[string][]*ast.File{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if entry.IsDir() {
			if skippedDirs[entry.Name()] || skippedDirs[filepath.ToSlash(path)] {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(filepath.Dir(path))
		packages[dir] = append(packages[dir], file)
		return nil
	})
	require.NoError(t, err)
	require.Contains(t, packages, "dbgen", "the walk found no generated queries; is the test running in the repository root?")

	var problems []string
	var queries int
	for dir, files := range packages {
		constants := constantNames(files)
		for _, file := range files {
			path := fset.Position(file.Pos()).Filename
			ast.Inspect(file, func(node ast.Node) bool {
				call, ok := node.(*ast.CallExpr)
				if !ok {
					return true
				}
				selector, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				position := fset.Position(call.Pos()).String()

				if index, ok := queryMethods[selector.Sel.Name]; ok && len(call.Args) > index {
					queries++
					switch {
					case dbgenOnlyPackages[dir]:
						problems = append(problems, position+": "+selector.Sel.Name+" called directly; add the query to db/queries and call it through dbgen")
					case !isConstant(call.Args[index], constants) && nonConstantSQLAllowed[filepath.ToSlash(path)] == "":
						problems = append(problems, position+": the SQL argument of "+selector.Sel.Name+" is not a constant")
					}
				}
				if isFmtSprintf(selector) && len(call.Args) > 0 {
					if format, ok := call.Args[0].(*ast.BasicLit); ok && sqlKeyword.MatchString(format.Value) {
						problems = append(problems, position+": fmt.Sprintf builds SQL")
					}
				}
				return true
			})
		}
	}

	require.Empty(t, problems)
	require.Greater(t, queries, 20, "too few query calls found; the check may have stopped matching them")
}

// constantNames returns the names of all constants declared in files, at
// package level or inside functions. A local variable that shadows one of
// them would be taken for a constant; no file does that.
func constantNames(files []*ast.File) map[string]bool {
	names := map[string]bool{}
	for _, file := range files {
		ast.Inspect(file, func(node ast.Node) bool {
			decl, ok := node.(*ast.GenDecl)
			if !ok || decl.Tok != token.CONST {
				return true
			}
			for _, spec := range decl.Specs {
				for _, name := range spec.(*ast.ValueSpec).Names {
					names[name.Name] = true
				}
			}
			return true
		})
	}
	return names
}

// isConstant reports whether expr is a string constant: a literal, a
// constant of the package, or a concatenation or parenthesis of those.
func isConstant(expr ast.Expr, constants map[string]bool) bool {
	switch e := expr.(type) {
	case *ast.BasicLit:
		return e.Kind == token.STRING
	case *ast.Ident:
		return constants[e.Name]
	case *ast.ParenExpr:
		return isConstant(e.X, constants)
	case *ast.BinaryExpr:
		return e.Op == token.ADD && isConstant(e.X, constants) && isConstant(e.Y, constants)
	}
	return false
}

func isFmtSprintf(selector *ast.SelectorExpr) bool {
	pkg, ok := selector.X.(*ast.Ident)
	return ok && pkg.Name == "fmt" && selector.Sel.Name == "Sprintf"
}
